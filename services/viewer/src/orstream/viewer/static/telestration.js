// Telestration over the video: strokes, a pointer and clear, on the `annotations` DataChannel.
// Coordinates are fractions of the picture (0,0 top left), so a stroke drawn on a laptop lands
// on the same anatomy on a 4K wall display. The edge stamps who drew what; this module draws
// what arrives and, for roles that may annotate, sends what the user draws on the main tile.
// A stroke is sent while it is drawn (same id, growing), so the OR sees it appear live.

const MAX_POINTS = 2000;             // the edge's limit per stroke
const SEND_INTERVAL_MS = 80;
const POINTER_INTERVAL_MS = 50;
const POINTER_TTL_MS = 2500;
const DEFAULT_WIDTH = 0.004;         // of the picture's width

let nextId = 0;
const newId = () => `s${Date.now().toString(36)}${(nextId++).toString(36)}`;

export class Telestration extends EventTarget {
  /**
   * @param stage  Stage (layout.js)
   * @param send   (message object) → bool, sends on the annotations channel
   */
  constructor(stage, send) {
    super();
    this.stage = stage;
    this.send = send;
    this.strokes = new Map();        // stream → Map(key → stroke)
    this.pointers = new Map();       // stream → Map(subject → {x, y, at, role})
    this.tool = null;                // "draw" | "point" | null
    this.color = "#ffd400";
    this.drawing = null;
    this._lastSent = 0;
    this._resize = new ResizeObserver(() => this.redrawAll());
    this._frame = null;
  }

  /** Attach a tile's ink canvas (call for every tile). */
  attach(tile) {
    this._resize.observe(tile.element);
    tile.video.addEventListener("resize", () => this.redraw(tile));
    tile.video.addEventListener("loadedmetadata", () => this.redraw(tile));
    const ink = tile.ink;
    ink.addEventListener("pointerdown", (e) => this.onDown(tile, e));
    ink.addEventListener("pointermove", (e) => this.onMove(tile, e));
    ink.addEventListener("pointerup", (e) => this.onUp(tile, e));
    ink.addEventListener("pointercancel", (e) => this.onUp(tile, e));
    this.redraw(tile);
  }

  /** Forget the room's drawing and tiles (leaving the room). */
  reset() {
    this._resize.disconnect();
    this.strokes.clear();
    this.pointers.clear();
    this.drawing = null;
  }

  setTool(tool) {
    this.tool = tool;
    // A drag would start on the draggable tile and cancel the pen's pointer events.
    for (const tile of this.stage.tiles) tile.element.draggable = !tool;
    if (tool) this.stage.element.dataset.tool = tool; else delete this.stage.element.dataset.tool;
  }

  /** Clear the main stream's drawing, here and everywhere. */
  clear() {
    const stream = this.stage.main?.stream;
    if (!stream) return;
    this.strokes.delete(stream);
    this.send({ type: "clear", stream });
    this.redrawAll();
  }

  // ---- what arrives on the channel ----

  /** A message from the annotations channel; returns true when it was an annotation. */
  receive(message) {
    switch (message.type) {
      case "stroke": {
        const key = `${message.origin}/${message.id}`;
        if (!this.strokes.has(message.stream)) this.strokes.set(message.stream, new Map());
        this.strokes.get(message.stream).set(key, message);
        this.redraw(this.stage.tile(message.stream));
        this.dispatchEvent(new CustomEvent("stroke", { detail: message }));
        return true;
      }
      case "clear":
        if (message.stream) this.strokes.delete(message.stream); else this.strokes.clear();
        this.redrawAll();
        return true;
      case "pointer": {
        if (!this.pointers.has(message.stream)) this.pointers.set(message.stream, new Map());
        this.pointers.get(message.stream).set(message.subject || message.origin,
          { x: message.x, y: message.y, at: performance.now(), who: message.subject, role: message.role });
        this.schedulePointerFade();
        this.redraw(this.stage.tile(message.stream));
        return true;
      }
      default:
        return false;
    }
  }

  // ---- drawing on the main tile ----

  point(tile, event) {
    const rect = tile.pictureRect();
    if (!rect) return null;
    const box = tile.video.getBoundingClientRect();
    const x = (event.clientX - box.left - rect.x) / rect.width;
    const y = (event.clientY - box.top - rect.y) / rect.height;
    if (x < 0 || x > 1 || y < 0 || y > 1) return null;
    return [Math.round(x * 10000) / 10000, Math.round(y * 10000) / 10000];
  }

  onDown(tile, event) {
    if (!this.tool || tile !== this.stage.main) return;
    const p = this.point(tile, event);
    if (!p) return;
    event.preventDefault();
    tile.ink.setPointerCapture(event.pointerId);
    if (this.tool === "draw") {
      this.drawing = { tile, stroke: { type: "stroke", id: newId(), stream: tile.stream, points: [p], color: this.color, width: DEFAULT_WIDTH } };
      this.redraw(tile);
    } else {
      this.sendPointer(tile, p, true);
    }
  }

  onMove(tile, event) {
    if (!this.tool || tile !== this.stage.main) return;
    const p = this.point(tile, event);
    if (!p) return;
    if (this.tool === "point") { if (event.buttons || event.pointerType !== "mouse") this.sendPointer(tile, p); return; }
    const d = this.drawing;
    if (!d || d.tile !== tile) return;
    if (d.stroke.points.length >= MAX_POINTS) { this.finish(); return; }
    d.stroke.points.push(p);
    this.redraw(tile);
    const now = performance.now();
    if (now - this._lastSent > SEND_INTERVAL_MS) { this._lastSent = now; this.send(d.stroke); }
  }

  onUp(tile) {
    if (this.drawing && this.drawing.tile === tile) this.finish();
  }

  finish() {
    const d = this.drawing;
    this.drawing = null;
    if (!d) return;
    this.send(d.stroke);
    if (!this.strokes.has(d.tile.stream)) this.strokes.set(d.tile.stream, new Map());
    this.strokes.get(d.tile.stream).set(`self/${d.stroke.id}`, d.stroke);
    this.redraw(d.tile);
    this.dispatchEvent(new CustomEvent("drawn", { detail: d.stroke }));
  }

  sendPointer(tile, [x, y], force = false) {
    const now = performance.now();
    if (!force && now - this._lastPointer < POINTER_INTERVAL_MS) return;
    this._lastPointer = now;
    this.send({ type: "pointer", stream: tile.stream, x, y });
    if (!this.pointers.has(tile.stream)) this.pointers.set(tile.stream, new Map());
    this.pointers.get(tile.stream).set("self", { x, y, at: now, who: "you" });
    this.schedulePointerFade();
    this.redraw(tile);
  }

  schedulePointerFade() {
    if (this._frame) return;
    const tick = () => {
      this._frame = null;
      const now = performance.now();
      let live = false;
      for (const [stream, map] of this.pointers) {
        let changed = false;
        for (const [who, p] of map) {
          if (now - p.at > POINTER_TTL_MS) { map.delete(who); changed = true; } else live = true;
        }
        if (changed) this.redraw(this.stage.tile(stream));
      }
      if (live) this._frame = setTimeout(tick, 250);
    };
    this._frame = setTimeout(tick, 250);
  }

  // ---- painting ----

  redrawAll() { for (const tile of this.stage.tiles) this.redraw(tile); }

  redraw(tile) {
    if (!tile) return;
    const rect = tile.pictureRect();
    const ink = tile.ink;
    if (!rect) { ink.width = 0; return; }
    const ratio = window.devicePixelRatio || 1;
    Object.assign(ink.style, { left: `${rect.x}px`, top: `${rect.y}px`, width: `${rect.width}px`, height: `${rect.height}px` });
    ink.width = Math.round(rect.width * ratio);
    ink.height = Math.round(rect.height * ratio);
    const ctx = ink.getContext("2d");
    ctx.clearRect(0, 0, ink.width, ink.height);
    const w = ink.width, h = ink.height;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    const strokes = [...(this.strokes.get(tile.stream)?.values() || [])];
    if (this.drawing?.tile === tile) strokes.push(this.drawing.stroke);
    for (const s of strokes) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = Math.max(1.5 * ratio, s.width * w);
      ctx.beginPath();
      s.points.forEach(([x, y], i) => (i ? ctx.lineTo(x * w, y * h) : ctx.moveTo(x * w, y * h)));
      if (s.points.length === 1) ctx.lineTo(s.points[0][0] * w + 0.1, s.points[0][1] * h);
      ctx.stroke();
    }
    for (const p of this.pointers.get(tile.stream)?.values() || []) {
      const r = Math.max(6 * ratio, 0.012 * w);
      ctx.fillStyle = "rgba(255, 60, 60, 0.85)";
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 2 * ratio;
      ctx.beginPath();
      ctx.arc(p.x * w, p.y * h, r, 0, Math.PI * 2);
      ctx.fill();
      ctx.stroke();
      if (p.who) {
        ctx.font = `${Math.round(r * 1.4)}px system-ui, sans-serif`;
        ctx.fillStyle = "#fff";
        ctx.fillText(p.who, p.x * w + r * 1.4, p.y * h + r * 0.5);
      }
    }
  }
}
