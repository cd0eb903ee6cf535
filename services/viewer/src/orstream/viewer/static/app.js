// The orstream viewer: sign in, pick a room, watch every stream of it the role may see, with
// the role's patient context, live quality, telestration and chat.
//
// Address parameters (bookmarkable, e.g. for the OR wall display):
//   ?room=<site>/<room>   open that room        ?layout=single|grid|main
//   ?stream=<name>        make it the main one  ?kiosk=1  wall display: video and context only
import { ApiError, EdgeApi } from "./api.js";
import { Chat } from "./chat.js";
import { LAYOUTS, Stage, Tile } from "./layout.js";
import { MetadataPanel } from "./metadata.js";
import { Quality, sessionReceipt } from "./quality.js";
import { RoomSession } from "./session.js";
import { askForToken, forgetToken, signIn } from "./signin.js";
import { Telestration } from "./telestration.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const BADGES = {
  identified: ["Identified", "identified", "You see the patient's identity"],
  technical: ["Technical", "technical", "You see device and stream data only, nothing about the patient"],
};
const deidentifiedBadge = (view) => ["De-identified", "deidentified", `Patient data de-identified (${view})`];
const RECEIPT_INTERVAL_MS = 1000;
/** A site or room name, as the edge's subjects allow them. */
const NAME = /^[A-Za-z0-9_-]{1,64}$/;

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function setState(state, text = state) {
  $("state").dataset.state = state;
  $("state").textContent = text;
}

function showIdentity(listing) {
  const view = listing.rights?.metadata || "";
  const [label, cls, title] = BADGES[view] || deidentifiedBadge(view);
  const badge = $("role");
  badge.textContent = label;
  badge.className = `badge ${cls}`;
  badge.title = `${title}. Role: ${listing.role}`;
  badge.dataset.role = listing.role;
  $("user").textContent = `${listing.subject} · ${listing.role}`;
  $("signout").hidden = false;
}

function roomPath(room) { return `${room.site}/${room.room}`; }

class Viewer {
  constructor(config, dictionary) {
    this.config = config;
    this.dictionary = dictionary;
    this.api = null;
    this.listing = null;
    this.session = null;
    this.stage = new Stage($("stage"));
    this.metadata = new MetadataPanel($("metadata"), dictionary);
    this.telestration = new Telestration(this.stage, (m) => this.session?.send("annotations", m) ?? false);
    this.chat = new Chat($("chat-log"), $("chat-form"), (m) => this.session?.send("annotations", m) ?? false);
    this.edgeStats = null;
    this._receipts = null;
    this.bindControls();
  }

  async enter(token) {
    this.api = new EdgeApi(this.config.edgeUrl, token);
    try {
      this.listing = await this.api.rooms();
    } catch (error) {
      return this.refused(error);
    }
    showMessage("");
    showIdentity(this.listing);
    this.route();
  }

  /** The edge refused us or cannot be reached: say why, and what to do. */
  async refused(error) {
    if (error instanceof ApiError && error.signInAgain) {
      showMessage(`Sign-in refused (${error.status}): ${error.reason}`);
      forgetToken();
      return this.enter(await askForToken(this.config));
    }
    showMessage(`The edge did not answer: ${error.message}. Retrying…`);
    setTimeout(() => this.enter(this.api.token), 3000);
  }

  route() {
    const wanted = params.get("room");
    const rooms = this.listing.rooms;
    if (wanted) {
      const [site, room, ...rest] = wanted.split("/");
      if (!NAME.test(site || "") || !NAME.test(room || "") || rest.length) {
        showMessage(`"${wanted}" is not a room: the address should name <site>/<room>.`);
        return this.showRoomsKeepingMessage();
      }
      // A room not in the listing is forbidden or not live: the edge's answer says which.
      const entry = rooms.find((r) => roomPath(r) === wanted) || { site, room, whep: `/whep/${site}/${room}`, streams: [] };
      return this.openRoom(entry);
    }
    if (rooms.length === 1) return this.openRoom(rooms[0]);
    this.showRooms();
  }

  showRooms() {
    this.closeRoom();
    $("room").hidden = true;
    $("rooms").hidden = false;
    $("breadcrumb").textContent = "";
    setState("idle", "choose a room");
    const list = $("room-list");
    list.replaceChildren();
    if (!this.listing.rooms.length) {
      showMessage("No room you may watch is live right now. This page refreshes by itself.");
      setTimeout(() => this.enter(this.api.token), 5000);
      return;
    }
    for (const room of this.listing.rooms) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = `?room=${encodeURIComponent(roomPath(room))}`;
      const site = Object.assign(document.createElement("span"), { className: "site", textContent: room.site });
      const name = Object.assign(document.createElement("span"), { className: "name", textContent: room.room });
      const streams = Object.assign(document.createElement("span"), {
        className: "streams",
        textContent: room.streams.map((s) => `${s.label || s.stream}${s.state === "live" ? "" : ` (${s.state})`}`).join(" · "),
      });
      a.append(site, name, streams);
      li.append(a);
      list.append(li);
    }
    list.querySelector("a")?.focus();
  }

  openRoom(room) {
    this.closeRoom();
    this.room = room;
    $("rooms").hidden = true;
    $("room").hidden = false;
    const crumb = $("breadcrumb");
    crumb.replaceChildren();
    if (this.listing.rooms.length > 1 && !params.has("kiosk")) {
      const back = Object.assign(document.createElement("a"), { href: "./", textContent: "Rooms" });
      crumb.append(back, document.createTextNode(" / "));
    }
    crumb.append(document.createTextNode(`${room.site} / ${room.room}`));
    document.title = `${room.room} · orstream`;
    const rights = this.listing.rights || {};
    $("tools").hidden = !rights.annotate;
    $("chat").hidden = !rights.chat;
    this.stage.setLayout(params.get("layout") || localStorage.getItem("orstream.layout") || "main");
    for (const s of room.streams) this.addTile(s.stream, this.label(s));
    this.session = new RoomSession(this.api, room);
    this.session.addEventListener("state", (e) => this.onState(e.detail));
    this.session.addEventListener("streams", (e) => this.onStreams(e.detail.streams));
    this.session.addEventListener("listing", (e) => {
      this.listing = e.detail.listing;
      if (e.detail.room) this.room = e.detail.room;
    });
    this.session.addEventListener("message", (e) => this.onMessage(e.detail));
    this.session.addEventListener("denied", (e) => this.onDenied(e.detail.error));
    this.session.start();
    this._receipts = setInterval(() => this.report(), RECEIPT_INTERVAL_MS);
  }

  closeRoom() {
    clearInterval(this._receipts);
    this.session?.close();
    this.session = null;
    this.stage.clear();
    this.metadata.clear();
    this.telestration.reset();
    $("chat-log").replaceChildren();
    $("metadata-none").hidden = false;
  }

  /** A stream's name on screen: its label, with the stream's name where labels repeat. */
  label(entry) {
    if (!entry) return undefined;
    const same = this.room.streams.filter((s) => (s.label || s.stream) === (entry.label || entry.stream));
    return same.length > 1 ? `${entry.label} · ${entry.stream}` : entry.label || entry.stream;
  }

  addTile(stream, label) {
    const existing = this.stage.tile(stream);
    if (existing) return existing;
    const tile = this.stage.add(new Tile(stream, label));
    tile.element.draggable = !this.telestration.tool;
    this.telestration.attach(tile);
    if (stream === (params.get("stream") || this.config.stream)) this.stage.promote(tile);
    return tile;
  }

  onStreams(streams) {
    for (const { stream, track, receiver } of streams) {
      const entry = this.room.streams.find((s) => s.stream === stream);
      const tile = this.addTile(stream, this.label(entry));
      tile.attach(track, receiver);
      tile.quality ||= new Quality(tile);
      tile.setSignal(true);
    }
    // A stream that stopped since: its tile says so instead of showing a frozen picture.
    const live = new Set(streams.map((s) => s.stream));
    for (const tile of this.stage.tiles) if (!live.has(tile.stream)) tile.setSignal(false);
  }

  onState({ state, reason, retryInS }) {
    if (state === "reconnecting" && retryInS) {
      setState(state, `reconnecting in ${retryInS.toFixed(1)} s`);
      $("state").title = reason || "";
    } else {
      setState(state);
      $("state").title = "";
    }
    if (state === "connected") showMessage("");
  }

  async onDenied(error) {
    if (error.signInAgain) {
      showMessage(`Your session ended (${error.status}): ${error.reason}. Please sign in again.`);
      this.closeRoom();
      $("room").hidden = true;
      forgetToken();
      return this.enter(await askForToken(this.config));
    }
    const where = `${this.room.site}/${this.room.room}`;
    this.closeRoom();
    $("room").hidden = true;
    setState("failed", "not allowed");
    showMessage(`You may not watch ${where} (${error.status}: ${error.reason}).`);
    if (this.listing.rooms.length) this.showRoomsKeepingMessage();
  }

  showRoomsKeepingMessage() {
    const text = $("message").textContent;
    this.showRooms();
    showMessage(text);
  }

  onMessage({ channel, data }) {
    let message;
    try { message = JSON.parse(data); } catch { return; }
    if (channel === "metadata" && message.type === "metadata") {
      $("metadata-none").hidden = true;
      this.metadata.show(message);
    } else if (channel === "annotations") {
      if (message.type === "chat") this.chat.append(message);
      else if (message.type === "error") this.chat.note(`Refused: ${message.reason}`);
      else this.telestration.receive(message);
    } else if (channel === "stats" && message.type === "trace") {
      // A sampled frame's trace: the tile answers when it showed it (viewer.receipt).
      this.stage.tile(message.stream)?.quality?.traceFrame(message.seq);
    } else if (channel === "stats" && message.type === "stats") {
      this.edgeStats = message;
      for (const [stream, s] of Object.entries(message.streams || {})) {
        const tile = this.stage.tile(stream);
        if (tile && s.rendition) tile.element.dataset.rendition = s.rendition;
      }
    }
  }

  /** Once a second: getStats() per tile, and what the tiles measured back to the edge. */
  report() {
    const tiles = this.stage.tiles.filter((t) => t.quality);
    for (const tile of tiles) tile.quality.sample();
    if (tiles.length) this.session?.send("stats", sessionReceipt(tiles.map((t) => t.quality.takeReceipt())));
  }

  bindControls() {
    for (const button of document.querySelectorAll("[data-layout]")) {
      button.addEventListener("click", () => this.stage.setLayout(button.dataset.layout));
    }
    this.stage.addEventListener("layout", ({ detail }) => {
      localStorage.setItem("orstream.layout", detail.layout);
      for (const b of document.querySelectorAll("[data-layout]")) b.setAttribute("aria-pressed", String(b.dataset.layout === detail.layout));
      requestAnimationFrame(() => this.telestration.redrawAll());
    });
    this.stage.addEventListener("main", () => requestAnimationFrame(() => this.telestration.redrawAll()));
    for (const button of document.querySelectorAll("[data-tool]")) {
      button.addEventListener("click", () => this.toggleTool(button.dataset.tool));
    }
    $("color").addEventListener("input", (e) => { this.telestration.color = e.target.value; });
    $("clear").addEventListener("click", () => this.telestration.clear());
    $("fullscreen").addEventListener("click", () => this.toggleFullscreen());
    $("toggle-side").addEventListener("click", () => {
      const side = $("side");
      side.hidden = !side.hidden;
      $("toggle-side").setAttribute("aria-expanded", String(!side.hidden));
      requestAnimationFrame(() => this.telestration.redrawAll());
    });
    $("signout").addEventListener("click", () => {
      this.closeRoom();
      forgetToken();
      location.replace(location.pathname);
    });
    document.addEventListener("keydown", (event) => this.onKey(event));
    addEventListener("pagehide", () => this.session?.close());
  }

  toggleTool(tool) {
    const next = this.telestration.tool === tool ? null : tool;
    this.telestration.setTool(next);
    for (const b of document.querySelectorAll("[data-tool]")) b.setAttribute("aria-pressed", String(b.dataset.tool === next));
  }

  toggleFullscreen() {
    if (document.fullscreenElement) document.exitFullscreen();
    else $("stage").requestFullscreen?.().catch(() => {});
  }

  onKey(event) {
    if (event.target.closest?.("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
    if ($("room").hidden) return;
    const key = event.key.toLowerCase();
    const layout = { 1: "single", 2: "grid", 3: "main" }[key];
    if (layout && LAYOUTS.includes(layout)) this.stage.setLayout(layout);
    else if (key === "f") this.toggleFullscreen();
    else if (!$("tools").hidden && key === "d") this.toggleTool("draw");
    else if (!$("tools").hidden && key === "p") this.toggleTool("point");
    else if (key === "escape" && this.telestration.tool) this.toggleTool(this.telestration.tool);
    else return;
    event.preventDefault();
  }
}

if (params.has("kiosk")) document.body.classList.add("kiosk");
const config = await (await fetch("config.json")).json();
const dictionary = fetch("dicom-dictionary.json").then((r) => (r.ok ? r.json() : {})).catch(() => ({}));
const viewer = new Viewer(config, await dictionary);
// A renewed token (OIDC refresh) is used from the next request on: the edge ends a session at
// its token's expiry and the session reconnects with the new one.
addEventListener("orstream:token", (event) => {
  if (event.detail.token && viewer.api) viewer.api.token = event.detail.token;
});
let token;
try {
  token = await signIn(config);
} catch (error) {
  showMessage(error.message);
  token = await askForToken(config);
}
viewer.enter(token);
