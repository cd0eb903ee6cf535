// Live quality of one tile: glass-to-glass latency from the timecode burned into the picture
// when there is one, else what WebRTC's getStats() says (jitter buffer delay, decode time,
// frames decoded and dropped, round-trip time, bitrate). Numbers reach the screen at most four
// times a second; the per-frame work is one small canvas read-back.
import { readTimecode } from "./timecode.js";

const WINDOW = 250;           // frames kept for medians (5 s at 50 fps)
const PAINT_MS = 250;
// Reading the timecode back from the picture costs a few ms of the page's main thread (more on
// a software-rendered wall display), so a tile reads it ten times a second; every frame only
// when a benchmark collects samples (globalThis.orstreamSamples).
const READ_INTERVAL_MS = 100;
// The edge asks about a sampled frame (a trace request): read every frame until it is shown,
// for at most this long (it may have been dropped), and answer in the next receipt.
const TRACE_WAIT_MS = 3000;
const MAX_TRACED = 16;        // the edge's limit per receipt

function quantile(sorted, q) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

export class Quality {
  /**
   * @param tile  a Tile (layout.js): .video, .element, .stream, .receiver
   */
  constructor(tile) {
    this.tile = tile;
    this.canvas = document.createElement("canvas");
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.latencies = [];          // glass-to-glass of recent frames (ms)
    this.unreported = [];         // since the last receipt
    this.framesSinceReceipt = 0;
    this.timecode = false;
    this.lastSeq = null;
    this.stats = {};              // newest getStats() figures
    this.prev = null;             // previous inbound-rtp report, for rates
    this._painted = 0;
    this._read = 0;
    this.traceWanted = new Map();  // seq → when asked (performance.now())
    this.traced = [];              // answers for the next receipt
    this._stopped = false;
    this._onFrame = this._onFrame.bind(this);
    tile.video.requestVideoFrameCallback(this._onFrame);
  }

  stop() { this._stopped = true; }

  /** A new receiver (after a reconnect): rates start again from its first report. */
  reset() {
    this.prev = null;
    this.stats = {};
    this.latencies = [];
  }

  /** The edge traces frame ``seq`` of this stream: say when it is shown. */
  traceFrame(seq) {
    // Only a picture with a timecode can say which frame it shows; without one, reading every
    // frame would only cost the page's main thread.
    if (this.timecode && this.traceWanted.size < MAX_TRACED) this.traceWanted.set(seq, performance.now());
  }

  _onFrame(now, metadata) {
    if (this._stopped) return;
    const video = this.tile.video;
    this.framesSinceReceipt += 1;
    for (const [seq, asked] of this.traceWanted) {
      if (now - asked > TRACE_WAIT_MS) this.traceWanted.delete(seq);
    }
    const tracing = this.traceWanted.size > 0;
    if (video.videoWidth && (tracing || globalThis.orstreamSamples || now - this._read >= READ_INTERVAL_MS)) {
      this._read = now;
      const tc = readTimecode(video, this.canvas, this.ctx);
      if (tc) {
        // Capture → when the compositor is expected to show this frame.
        const shownMs = performance.timeOrigin + metadata.expectedDisplayTime;
        if (this.traceWanted.delete(tc.seq) && this.traced.length < MAX_TRACED) {
          this.traced.push({ stream: this.tile.stream, seq: tc.seq, presented_ms: shownMs });
        }
        const latency = shownMs - tc.captureMs;
        this.timecode = true;
        this.lastSeq = tc.seq;
        this.latencies.push(latency);
        if (this.latencies.length > WINDOW) this.latencies.shift();
        this.unreported.push(latency);
        this.tile.element.dataset.seq = tc.seq;
        if (this.tile.element.classList.contains("main")) document.body.dataset.lastSeq = tc.seq;
        this.tile.element.dataset.latencyMs = latency.toFixed(1);
        globalThis.orstreamSamples?.push({ stream: this.tile.stream, seq: tc.seq, glassToGlassMs: latency });
      }
    }
    if (now - this._painted > PAINT_MS) { this._painted = now; this.paint(); }
    video.requestVideoFrameCallback(this._onFrame);
  }

  /** Sample getStats() (called once a second by the app). */
  async sample() {
    const receiver = this.tile.receiver;
    if (!receiver) return;
    let report;
    try { report = await receiver.getStats(); } catch { return; }
    let inbound = null, rttS = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") inbound = s;
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) rttS = s.currentRoundTripTime;
    });
    if (!inbound) return;
    const prev = this.prev;
    const stats = {
      framesDecoded: inbound.framesDecoded || 0,
      framesDropped: inbound.framesDropped || 0,
      fps: inbound.framesPerSecond || null,
      width: inbound.frameWidth, height: inbound.frameHeight,
      rttMs: rttS === null ? null : rttS * 1000,
    };
    if (prev) {
      const emitted = inbound.jitterBufferEmittedCount - prev.jitterBufferEmittedCount;
      const decoded = inbound.framesDecoded - prev.framesDecoded;
      stats.jitterBufferMs = emitted > 0 ? (inbound.jitterBufferDelay - prev.jitterBufferDelay) / emitted * 1000 : null;
      stats.decodeMs = decoded > 0 ? (inbound.totalDecodeTime - prev.totalDecodeTime) / decoded * 1000 : null;
      const seconds = (inbound.timestamp - prev.timestamp) / 1000;
      stats.bitrateMbps = seconds > 0 ? (inbound.bytesReceived - prev.bytesReceived) * 8 / seconds / 1e6 : null;
      stats.droppedSince = Math.max(0, inbound.framesDropped - prev.framesDropped);
    }
    this.prev = inbound;
    this.stats = stats;
    this.paint();
  }

  /** Median and 95th percentile of the recent glass-to-glass latencies (ms), or nulls. */
  latency() {
    const sorted = [...this.latencies].sort((a, b) => a - b);
    return { p50: quantile(sorted, 0.5), p95: quantile(sorted, 0.95) };
  }

  /** What this tile measured since the last call, for the edge's stats channel. */
  takeReceipt() {
    const sorted = this.unreported.sort((a, b) => a - b);
    const receipt = {
      frames: this.framesSinceReceipt,
      glass: sorted.length ? { p50: quantile(sorted, 0.5), p95: quantile(sorted, 0.95) } : null,
      decodeMs: this.stats.decodeMs > 0 ? this.stats.decodeMs : null,
      dropped: this.stats.droppedSince ?? 0,
      traced: this.traced,
    };
    this.traced = [];
    this.unreported = [];
    this.framesSinceReceipt = 0;
    return receipt;
  }

  paint() {
    const el = this.tile.element;
    const latency = el.querySelector(".latency");
    const detail = el.querySelector(".detail");
    const s = this.stats;
    if (this.timecode && this.latencies.length) {
      latency.textContent = `${Math.max(0, this.latencies[this.latencies.length - 1]).toFixed(0)} ms`;
      latency.title = "Glass-to-glass latency, from the timecode in the picture";
    } else {
      const estimate = (s.jitterBufferMs ?? 0) + (s.decodeMs ?? 0) + (s.rttMs ?? 0) / 2;
      latency.textContent = s.jitterBufferMs == null ? "–" : `≈${estimate.toFixed(0)} ms`;
      latency.title = "No timecode in this stream: jitter buffer + decode + half the round trip";
    }
    const parts = [];
    if (s.fps) parts.push(`${s.fps.toFixed(0)} fps`);
    if (s.width) parts.push(`${s.height}p`);
    if (s.bitrateMbps != null) parts.push(`${s.bitrateMbps.toFixed(1)} Mbit/s`);
    if (s.jitterBufferMs != null) parts.push(`jb ${s.jitterBufferMs.toFixed(0)} ms`);
    if (s.rttMs != null) parts.push(`rtt ${s.rttMs.toFixed(0)} ms`);
    if (s.framesDropped) parts.push(`${s.framesDropped} dropped`);
    detail.textContent = parts.join(" · ");
  }
}

/** One receipt for the whole session from its tiles' receipts (the edge's Receipt schema). */
export function sessionReceipt(receipts) {
  const frames = receipts.reduce((n, r) => n + r.frames, 0);
  const receipt = { type: "receipt", frames, frames_dropped: receipts.reduce((n, r) => n + r.dropped, 0) };
  const glass = receipts.filter((r) => r.glass);
  if (glass.length) {
    receipt.glass_to_glass_ms = Math.max(0, Math.max(...glass.map((r) => r.glass.p50)));
    receipt.glass_to_glass_p95_ms = Math.max(0, Math.max(...glass.map((r) => r.glass.p95)));
  }
  const decode = receipts.map((r) => r.decodeMs).filter((d) => d != null);
  if (decode.length) receipt.decode_ms = Math.max(...decode);
  const traced = receipts.flatMap((r) => r.traced || []).slice(0, MAX_TRACED);
  if (traced.length) receipt.traced = traced;
  return receipt;
}
