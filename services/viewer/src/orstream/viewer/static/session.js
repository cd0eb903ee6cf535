// One WHEP room session: one RTCPeerConnection carrying every stream of the room the role may
// see (one recvonly video transceiver each) plus the metadata, annotations and stats
// DataChannels. It keeps itself connected: a dropped connection is re-established with
// exponential backoff and jitter, so a restarted edge or a network blip heals without a click.
// A refusal that retrying cannot fix (401, 403) ends it with the edge's reason.
//
// Events (a RoomSession is an EventTarget):
//   "state"   detail: {state, attempt, retryInS?}   connecting|connected|reconnecting|failed|closed
//   "listing" detail: {listing, room}                 the edge's room listing, fetched per attempt
//   "streams" detail: {streams: [{stream, track, receiver}]}   after each (re)connection
//   "message" detail: {channel, data}                 a DataChannel message (text)
//   "denied"  detail: {error}                         an ApiError the session will not retry
import { ApiError } from "./api.js";

export const CHANNELS = ["metadata", "annotations", "stats"];
const BACKOFF_MIN_S = 0.5, BACKOFF_MAX_S = 15;
/** A "disconnected" connection often recovers by itself (ICE consent); give it this long. */
const DISCONNECTED_GRACE_MS = 4000;
const ICE_GATHER_TIMEOUT_MS = 2000;
/** The edge's default ORSTREAM_MAX_ROOM_STREAMS: more video m-lines than that are refused. */
const MAX_STREAMS = 8;

/** Delay before attempt `n` (1, 2, …): doubling from 0.5 s to 15 s, ±25 % jitter. */
export function backoffS(attempt) {
  const base = Math.min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** Math.max(0, attempt - 1));
  return base * (0.75 + Math.random() * 0.5);
}

function waitForIce(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

export class RoomSession extends EventTarget {
  /**
   * @param api      EdgeApi
   * @param room     an entry of /api/v1/rooms: {site, room, whep, streams}
   * @param options  {streams: names to ask for (default: all the role may see)}
   */
  constructor(api, room, options = {}) {
    super();
    this.api = api;
    this.room = room;
    this.wanted = options.streams || null;
    this.pc = null;
    this.resource = null;
    this.channels = new Map();
    this.attempt = 0;
    this.closed = false;
    this.state = "idle";
    this._timer = null;
    this._graceTimer = null;
  }

  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  setState(state, extra = {}) {
    this.state = state;
    this.emit("state", { state, attempt: this.attempt, ...extra });
  }

  start() {
    this.closed = false;
    this.connect();
    return this;
  }

  /** Send a text message on a DataChannel; false when it is not open. */
  send(label, message) {
    const channel = this.channels.get(label);
    if (!channel || channel.readyState !== "open") return false;
    channel.send(typeof message === "string" ? message : JSON.stringify(message));
    return true;
  }

  async connect() {
    clearTimeout(this._timer);
    this.teardown();
    this.attempt += 1;
    this.setState(this.attempt === 1 ? "connecting" : "reconnecting");
    try {
      const iceServers = await this.api.iceServers();
      // Which streams are live now: a stream that stopped or started since the last attempt
      // changes the offer (the edge refuses more video m-lines than streams it will send).
      const names = await this.liveStreams();
      if (this.closed) return;
      const pc = new RTCPeerConnection({ iceServers, bundlePolicy: "max-bundle" });
      this.pc = pc;
      const transceivers = [];
      for (let i = 0; i < Math.max(1, names.length); i += 1) {
        const t = pc.addTransceiver("video", { direction: "recvonly" });
        // Play each frame as soon as it is complete: the OR needs latency, not smoothness.
        if ("jitterBufferTarget" in t.receiver) t.receiver.jitterBufferTarget = 0;
        transceivers.push(t);
      }
      for (const label of CHANNELS) this.openChannel(pc, label);
      pc.addEventListener("connectionstatechange", () => this.onConnectionState(pc));
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIce(pc, ICE_GATHER_TIMEOUT_MS);
      if (this.closed || this.pc !== pc) return;
      const query = names.length ? `?streams=${names.map(encodeURIComponent).join(",")}` : "";
      const { answer, resource, streams } = await this.api.whep(this.room.whep + query, pc.localDescription.sdp);
      if (this.closed || this.pc !== pc) { this.api.release(resource); return; }
      this.resource = resource;
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
      // The answer names the stream of each video m-line, in the offer's order. Transceivers
      // the edge did not fill (more offered than streams live) are rejected and stay unused.
      const sent = streams.length ? streams : names;
      this.emit("streams", {
        streams: sent.map((stream, i) => ({
          stream, track: transceivers[i].receiver.track, receiver: transceivers[i].receiver,
        })).filter((s) => s.track),
      });
    } catch (error) {
      this.onFailure(error);
    }
  }

  /**
   * The streams to ask for: those of the room the role may watch that are live now (at most
   * MAX_STREAMS), narrowed to `options.streams`; empty when the room is not listed (forbidden
   * or nothing live: the edge's answer to a plain room offer says which).
   */
  async liveStreams() {
    const listing = await this.api.rooms();
    const room = listing.rooms.find((r) => r.site === this.room.site && r.room === this.room.room);
    this.emit("listing", { listing, room: room || null });
    let names = room ? room.streams.map((s) => s.stream) : [];
    if (this.wanted) names = names.filter((n) => this.wanted.includes(n));
    return names.slice(0, MAX_STREAMS);
  }

  openChannel(pc, label) {
    const channel = pc.createDataChannel(label, { ordered: true });
    channel.addEventListener("message", (event) => {
      if (typeof event.data === "string") this.emit("message", { channel: label, data: event.data });
    });
    // The edge closing a channel of a live connection means it ended the session: reconnect
    // (a session ended for good is then refused with the reason).
    channel.addEventListener("close", () => {
      if (this.pc === pc && !this.closed) this.retry(`the edge closed the ${label} channel`);
    });
    this.channels.set(label, channel);
  }

  onConnectionState(pc) {
    if (pc !== this.pc || this.closed) return;
    const state = pc.connectionState;
    clearTimeout(this._graceTimer);
    if (state === "connected") {
      this.attempt = 0;
      this.setState("connected");
    } else if (state === "disconnected") {
      this.setState("reconnecting");
      this._graceTimer = setTimeout(() => {
        if (this.pc === pc && pc.connectionState !== "connected") this.retry("the connection was lost");
      }, DISCONNECTED_GRACE_MS);
    } else if (state === "failed" || state === "closed") {
      this.retry(`the connection ${state}`);
    }
  }

  onFailure(error) {
    if (this.closed) return;
    if (error instanceof ApiError && [401, 403].includes(error.status)) {
      this.teardown();
      this.setState("failed", { reason: error.reason });
      this.emit("denied", { error });
      return;
    }
    this.retry(error.message || String(error), error instanceof ApiError ? error.retryAfterS : null);
  }

  /** Try again after the backoff (or the edge's Retry-After). */
  retry(reason, retryAfterS = null) {
    if (this.closed) return;
    this.teardown();
    const delayS = Math.max(retryAfterS || 0, backoffS(this.attempt));
    this.setState("reconnecting", { reason, retryInS: delayS });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this.connect(), delayS * 1000);
  }

  teardown() {
    clearTimeout(this._graceTimer);
    if (this.resource) this.api.release(this.resource);
    this.resource = null;
    for (const channel of this.channels.values()) channel.close();
    this.channels.clear();
    if (this.pc) {
      const pc = this.pc;
      this.pc = null;
      pc.close();
    }
  }

  close() {
    this.closed = true;
    clearTimeout(this._timer);
    this.teardown();
    this.setState("closed");
  }
}
