// The stage: one tile per stream, in one of three layouts: single (the main stream only), grid,
// and main + thumbnails. The first tile is the main one; a stream becomes main by dragging its
// tile onto the main slot, by Enter on a focused tile, or by a double click.

export const LAYOUTS = ["single", "grid", "main"];

export class Tile {
  constructor(stream, label) {
    const template = document.getElementById("tile-template");
    this.element = template.content.firstElementChild.cloneNode(true);
    this.element.dataset.stream = stream;
    this.stream = stream;
    this.video = this.element.querySelector("video");
    this.video.dataset.stream = stream;
    this.ink = this.element.querySelector("canvas.ink");
    this.element.querySelector(".name").textContent = label || stream;
    this.element.setAttribute("aria-label", `Stream ${label || stream}`);
    this.receiver = null;
    this.quality = null;
  }

  /** Play a received track (again after a reconnect). */
  attach(track, receiver) {
    this.receiver = receiver;
    this.quality?.reset();
    this.video.srcObject = new MediaStream([track]);
    this.video.play().catch(() => {});
  }

  /** Whether the session carries this stream now; without it the tile says "no signal". */
  setSignal(live) {
    this.element.classList.toggle("stalled", !live);
    this.element.querySelector(".tile-state").textContent = live ? "" : "no signal";
    if (!live) this.video.srcObject = null;
  }

  /** Where the picture is inside the tile (object-fit: contain letterboxes it). */
  pictureRect() {
    const box = this.video.getBoundingClientRect();
    const vw = this.video.videoWidth, vh = this.video.videoHeight;
    if (!vw || !vh || !box.width || !box.height) return null;
    const scale = Math.min(box.width / vw, box.height / vh);
    const width = vw * scale, height = vh * scale;
    return { x: (box.width - width) / 2, y: (box.height - height) / 2, width, height };
  }
}

export class Stage extends EventTarget {
  constructor(element) {
    super();
    this.element = element;
    this.tiles = [];
    this.layout = "main";
    this.dragged = null;
    element.addEventListener("dragover", (event) => this.onDragOver(event));
    element.addEventListener("dragleave", () => element.classList.remove("drop-target"));
    element.addEventListener("drop", (event) => this.onDrop(event));
  }

  get main() { return this.tiles[0] || null; }

  tile(stream) { return this.tiles.find((t) => t.stream === stream) || null; }

  add(tile) {
    this.tiles.push(tile);
    this.element.append(tile.element);
    const el = tile.element;
    el.addEventListener("dragstart", (event) => {
      this.dragged = tile;
      el.classList.add("dragging");
      event.dataTransfer.setData("text/plain", tile.stream);
      event.dataTransfer.effectAllowed = "move";
    });
    el.addEventListener("dragend", () => {
      el.classList.remove("dragging");
      this.element.classList.remove("drop-target");
      this.dragged = null;
    });
    el.addEventListener("dblclick", () => this.promote(tile));
    el.addEventListener("keydown", (event) => {
      if (event.target === el && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        this.promote(tile);
      }
    });
    this.arrange();
    return tile;
  }

  clear() {
    for (const tile of this.tiles) { tile.quality?.stop(); tile.element.remove(); }
    this.tiles = [];
    this.arrange();
  }

  /** Make a tile the main one. */
  promote(tile) {
    const i = this.tiles.indexOf(tile);
    if (i <= 0) return;
    this.tiles.splice(i, 1);
    this.tiles.unshift(tile);
    this.element.prepend(tile.element);
    tile.element.focus();
    this.arrange();
    this.dispatchEvent(new CustomEvent("main", { detail: { tile } }));
  }

  setLayout(layout) {
    if (!LAYOUTS.includes(layout)) return;
    this.layout = layout;
    this.arrange();
    this.dispatchEvent(new CustomEvent("layout", { detail: { layout } }));
  }

  arrange() {
    const n = this.tiles.length;
    const classes = this.element.classList;
    for (const l of LAYOUTS) classes.toggle(`layout-${l}`, l === this.layout);
    classes.toggle("has-thumbs", this.layout === "main" && n > 1);
    this.element.style.setProperty("--cols", String(Math.max(1, Math.ceil(Math.sqrt(n)))));
    this.element.style.setProperty("--thumbs", String(Math.max(1, n - 1)));
    this.tiles.forEach((t, i) => {
      t.element.classList.toggle("main", i === 0);
      t.element.setAttribute("aria-current", i === 0 ? "true" : "false");
    });
  }

  onDragOver(event) {
    if (!this.dragged) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "move";
    this.element.classList.add("drop-target");
  }

  onDrop(event) {
    event.preventDefault();
    this.element.classList.remove("drop-target");
    const stream = event.dataTransfer.getData("text/plain");
    const tile = this.dragged || this.tile(stream);
    const target = event.target.closest?.(".tile");
    if (!tile) return;
    // Dropped on another thumbnail: swap the two; anywhere else (the main slot): make it main.
    if (target && target !== tile.element && target !== this.main?.element) {
      const other = this.tiles.find((t) => t.element === target);
      const a = this.tiles.indexOf(tile), b = this.tiles.indexOf(other);
      [this.tiles[a], this.tiles[b]] = [this.tiles[b], this.tiles[a]];
      for (const t of this.tiles) this.element.append(t.element);
      this.arrange();
      return;
    }
    this.promote(tile);
  }
}
