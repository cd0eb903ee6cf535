// Minimal viewer: sign in with a token, play one stream over WHEP, show latency from the
// timecode burned into the picture (see orstream.common.timecode for its layout).
import { readTimecode } from "./timecode.js";
import { signIn, askForToken, forgetToken } from "./signin.js";

const $ = (id) => document.getElementById(id);
const ROLE_BADGES = {
  surgeon: ["Identified", "identified"], expert: ["Identified", "identified"],
  student: ["De-identified", "deidentified"], ops: ["Technical", "technical"],
};

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = false;
}

function setState(text) { $("state").textContent = text; }

async function api(config, token, path, init = {}) {
  const response = await fetch(config.edgeUrl + path, {
    ...init, headers: { ...(init.headers || {}), Authorization: `Bearer ${token}` },
  });
  return response;
}

async function waitForIce(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

async function play(config, token, stream) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  const transceiver = pc.addTransceiver("video", { direction: "recvonly" });
  if ("jitterBufferTarget" in transceiver.receiver) transceiver.receiver.jitterBufferTarget = 0;
  pc.addEventListener("track", (event) => { $("video").srcObject = event.streams[0] || new MediaStream([event.track]); });
  pc.addEventListener("connectionstatechange", () => setState(pc.connectionState));
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIce(pc, 2000);
  const response = await api(config, token, stream.whep, {
    method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp,
  });
  if (response.status !== 201) {
    pc.close();
    throw new Error(`${response.status}: ${(await response.text()).trim()}`);
  }
  const resource = new URL(response.headers.get("Location"), config.edgeUrl).href;
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  addEventListener("pagehide", () => {
    fetch(resource, { method: "DELETE", keepalive: true, headers: { Authorization: `Bearer ${token}` } });
  });
  $("stage").hidden = false;
  $("stream-name").textContent = `${stream.room} · ${stream.label || stream.stream}`;
  measure($("video"));
  return pc;
}

function measure(video) {
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  let frames = 0, since = performance.now();
  const onFrame = (now, metadata) => {
    if (video.videoWidth) {
      const tc = readTimecode(video, canvas, ctx);
      if (tc) {
        // Glass to glass: capture time → when the compositor is expected to show this frame.
        const shownMs = performance.timeOrigin + metadata.expectedDisplayTime;
        globalThis.orstreamSamples?.push({ stream: video.dataset.stream || "", seq: tc.seq, glassToGlassMs: shownMs - tc.captureMs });
        $("latency").textContent = Math.max(0, Date.now() - tc.captureMs).toFixed(0);
        $("frame").textContent = tc.seq;
        document.body.dataset.lastSeq = tc.seq;
      }
      frames += 1;
      const now = performance.now();
      if (now - since > 1000) {
        $("fps").textContent = `${(frames * 1000 / (now - since)).toFixed(0)} fps`;
        frames = 0; since = now;
      }
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

async function start(config, token) {
  const response = await api(config, token, "/api/v1/streams");
  if (!response.ok) {
    showMessage(`Sign-in refused (${response.status}): ${(await response.text()).trim()}`);
    forgetToken();
    start(config, await askForToken(config));
    return;
  }
  const { role, streams } = await response.json();
  const [label, cls] = ROLE_BADGES[role] || [role, ""];
  $("role").textContent = label;
  $("role").className = `badge ${cls}`;
  const wanted = new URLSearchParams(location.search).get("stream") || config.stream;
  const stream = streams.find((s) => s.stream === wanted && s.room === config.room) || streams[0];
  if (!stream) {
    showMessage("No stream you may watch is live right now.");
    return;
  }
  setState("connecting");
  try {
    await play(config, token, stream);
  } catch (error) {
    showMessage(`Cannot play ${stream.room}/${stream.stream}: ${error.message}`);
    setState("failed");
  }
}

const config = await (await fetch("config.json")).json();
start(config, await signIn(config));
