// The edge's HTTP API: room listing, ICE servers, WHEP. Every call carries the bearer token; a
// refusal becomes an ApiError with the edge's status and reason (the edge answers in plain text).

export class ApiError extends Error {
  constructor(status, reason, retryAfterS = null) {
    super(`${status}: ${reason}`);
    this.status = status;
    this.reason = reason;
    this.retryAfterS = retryAfterS;
  }

  /** The token is no good any more (expired, revoked, malformed): sign in again. */
  get signInAgain() { return this.status === 401; }
}

async function refusal(response) {
  const text = (await response.text()).trim();
  let reason = text;
  try {
    const body = JSON.parse(text);
    reason = body.detail || body.reason || text;
  } catch { /* plain text, as the edge sends */ }
  const retry = Number(response.headers.get("Retry-After"));
  return new ApiError(response.status, reason || response.statusText, Number.isFinite(retry) && retry > 0 ? retry : null);
}

export class EdgeApi {
  constructor(edgeUrl, token) {
    this.edgeUrl = edgeUrl.replace(/\/$/, "");
    this.token = token;
  }

  url(path) { return new URL(path, this.edgeUrl + "/").href; }

  async fetch(path, init = {}) {
    let response;
    try {
      response = await fetch(this.url(path), {
        ...init, headers: { ...(init.headers || {}), Authorization: `Bearer ${this.token}` },
      });
    } catch (error) {
      throw new ApiError(0, `the edge cannot be reached (${error.message})`);
    }
    if (!response.ok) throw await refusal(response);
    return response;
  }

  /** `{role, subject, expires_at, rights, rooms: [{site, room, whep, streams: [...]}]}` */
  async rooms() { return (await this.fetch("/api/v1/rooms")).json(); }

  /** RTCIceServer entries; TURN credentials expire with the token. */
  async iceServers() {
    try {
      return (await (await this.fetch("/api/v1/ice-servers")).json()).iceServers || [];
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) throw error;
      return [];  // host candidates still work on the hospital LAN
    }
  }

  /** POST an offer; the answer, the session resource and the stream of each video m-line. */
  async whep(path, offerSdp) {
    const response = await this.fetch(path, {
      method: "POST", headers: { "Content-Type": "application/sdp" }, body: offerSdp,
    });
    const location = response.headers.get("Location");
    return {
      answer: await response.text(),
      resource: location ? this.url(location) : null,
      streams: (response.headers.get("Orstream-Streams") || "").split(",").filter(Boolean),
    };
  }

  /** End a WHEP session; `keepalive` lets it outlive a closing page. */
  release(resource) {
    if (!resource) return;
    fetch(resource, {
      method: "DELETE", keepalive: true, headers: { Authorization: `Bearer ${this.token}` },
    }).catch(() => {});
  }
}
