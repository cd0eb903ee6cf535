// OpenID Connect sign-in without a library: the Authorization Code flow with PKCE (RFC 7636,
// S256) for a public client, the way OAuth 2.0 for browser-based apps recommends it.
//
//   beginSignIn(oidc)     discovery; a PKCE verifier, state and nonce kept for this tab;
//        │                the page goes to the provider's authorization_endpoint
//        ▼
//   the provider signs the user in and sends the browser back to this page:
//   ?code=…&state=… (or ?error=…&error_description=…)
//        │
//   completeSignIn(oidc)  state (and iss) checked, the address cleaned, the code exchanged at
//        │                the token_endpoint with the verifier, the id_token's nonce, issuer
//        ▼                and audience checked
//   a session {token, expiresAtMs, refreshToken, …} in sessionStorage; keepFresh() renews it
//   with the refresh token shortly before it expires, or reports it lost when it expires.
//
// Signatures are not checked here: the edge verifies every token it is sent against the
// provider's keys. `oidc` is /config.json's "oidc": {issuer, clientId, scope, token,
// authParams}; `token` names the token the edge gets ("access_token" or "id_token"). Every
// failure is an OidcError whose message a user can read.

const PENDING = "orstream.oidc.pending";
const SESSION = "orstream.oidc.session";
/** Parameters the provider adds to the address on its way back (RFC 6749 4.1.2, RFC 9207). */
const ANSWER_PARAMS = ["code", "state", "session_state", "iss", "error", "error_description", "error_uri"];
/** A sign-in started longer ago than this is not completed (the code would be stale anyway). */
const PENDING_MAX_AGE_MS = 15 * 60_000;
/** Renew this long before expiry at most, and after three quarters of a short token's life. */
const RENEW_AHEAD_MAX_MS = 60_000;
const RENEW_AHEAD_SHARE = 0.25;
/** A token this close to its expiry is not used for a new session. */
const EXPIRY_SLACK_MS = 5_000;
/** After a failed renewal that may heal (network, 5xx): try again this soon, while time is left. */
const RENEW_RETRY_MS = 10_000;
/** Readable reasons for the error codes of RFC 6749 4.1.2.1 / 5.2 and OIDC Core 3.1.2.6. */
const ERROR_TEXT = {
  access_denied: "access was denied",
  login_required: "you need to sign in",
  consent_required: "consent is required",
  interaction_required: "the identity provider needs you to interact with it",
  invalid_request: "the request was not valid",
  unauthorized_client: "this viewer is not allowed to use this sign-in",
  unsupported_response_type: "the identity provider does not offer the code flow to this viewer",
  invalid_scope: "a requested scope is not allowed",
  server_error: "the identity provider had an internal error",
  temporarily_unavailable: "the identity provider is temporarily unavailable",
  invalid_grant: "the sign-in is no longer valid",
  invalid_client: "this viewer is not known to the identity provider",
};

export class OidcError extends Error {
  /** `code`: the OAuth error code when the provider gave one (access_denied, invalid_grant…). */
  constructor(message, code = "") {
    super(message);
    this.name = "OidcError";
    this.code = code;
  }
}

/** How the provider is named to users: its host. */
export function providerName(oidc) {
  return new URL(oidc.issuer).host;
}

// --- Encoding and randomness ---------------------------------------------------------------

function base64url(bytes) {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomText(bytes) {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

async function s256(verifier) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

/** A JWT's claims, read without checking the signature (the edge checks it). */
function jwtClaims(token, what) {
  const parts = String(token).split(".");
  if (parts.length !== 3) throw new OidcError(`The ${what} is not a signed JWT the viewer can read.`);
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(base64 + "===".slice((base64.length + 3) % 4)), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    if (claims && typeof claims === "object") return claims;
  } catch { /* reported below */ }
  throw new OidcError(`The ${what} is not a signed JWT the viewer can read.`);
}

// --- Talking to the provider -----------------------------------------------------------------

async function reach(oidc, url, init, what) {
  try {
    return await fetch(url, { cache: "no-store", ...init });
  } catch (error) {
    throw new OidcError(
      `Cannot reach the identity provider ${providerName(oidc)} for ${what} (${error.message}). ` +
      "Is it up, and does it allow this page's origin (CORS)?",
    );
  }
}

const discoveries = new Map();

/** The provider's OpenID configuration (OIDC Discovery 4), fetched once per page. */
function discover(oidc) {
  if (!discoveries.has(oidc.issuer)) {
    const found = fetchDiscovery(oidc);
    discoveries.set(oidc.issuer, found);
    found.catch(() => discoveries.delete(oidc.issuer));  // try again next time
  }
  return discoveries.get(oidc.issuer);
}

async function fetchDiscovery(oidc) {
  const name = providerName(oidc);
  const url = oidc.issuer.replace(/\/$/, "") + "/.well-known/openid-configuration";
  const response = await reach(oidc, url, {}, "its configuration");
  if (!response.ok) {
    throw new OidcError(`The identity provider ${name} answered ${response.status} when asked for its OpenID configuration.`);
  }
  let provider;
  try {
    provider = await response.json();
  } catch {
    throw new OidcError(`The identity provider ${name} sent an OpenID configuration that is not JSON.`);
  }
  if (provider.issuer !== oidc.issuer) {
    throw new OidcError(
      `The identity provider at ${name} calls itself ${provider.issuer}, not ${oidc.issuer}: ` +
      "the viewer's ORSTREAM_OIDC_ISSUER must be its issuer exactly.",
    );
  }
  for (const field of ["authorization_endpoint", "token_endpoint"]) {
    if (typeof provider[field] !== "string") {
      throw new OidcError(`The identity provider ${name} names no ${field}: it cannot sign users in to the viewer.`);
    }
  }
  const methods = provider.code_challenge_methods_supported;
  if (Array.isArray(methods) && !methods.includes("S256")) {
    throw new OidcError(`The identity provider ${name} does not offer PKCE with S256, which the viewer requires.`);
  }
  return provider;
}

/** A form-encoded POST to the token endpoint (a public client: no secret, no preflight). */
async function tokenRequest(oidc, form, refusal) {
  const provider = await discover(oidc);
  const response = await reach(oidc, provider.token_endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
    body: new URLSearchParams(form),
  }, "a token");
  let body = null;
  try {
    body = await response.json();
  } catch { /* reported below */ }
  if (!response.ok || !body || typeof body !== "object") {
    const code = typeof body?.error === "string" ? body.error : "";
    const reason = body?.error_description || ERROR_TEXT[code] || `it answered ${response.status} ${response.statusText}`.trim();
    throw new OidcError(`${refusal} ${providerName(oidc)}: ${reason}${code ? ` (${code})` : ""}.`, code);
  }
  return body;
}

// --- The session --------------------------------------------------------------------------

/** How long from now the token lives, in ms; null when neither the answer nor the token says. */
function lifetimeMs(oidc, answer, token) {
  if (oidc.token === "access_token" && Number(answer.expires_in) > 0) return answer.expires_in * 1000;
  let claims = null;
  try {
    claims = jwtClaims(token, oidc.token);
  } catch { /* an opaque token: the edge will say what it thinks of it */ }
  // exp - iat: the provider's clock on both sides, so a browser clock that is off does not matter.
  if (Number.isFinite(claims?.exp) && Number.isFinite(claims?.iat)) return (claims.exp - claims.iat) * 1000;
  if (Number.isFinite(claims?.exp)) return claims.exp * 1000 - Date.now();
  return Number(answer.expires_in) > 0 ? answer.expires_in * 1000 : null;
}

/** Checks a token answer and keeps it as this tab's session. `nonce`: the sign-in's (code
 * exchange only); `previous`: the session a refresh renews. */
function keep(oidc, answer, { nonce = null, previous = null } = {}) {
  const name = providerName(oidc);
  const idToken = answer.id_token || null;
  let subject = previous?.subject ?? null;
  if (nonce !== null && !idToken) {
    throw new OidcError(`The identity provider ${name} sent no id_token: is "openid" in ORSTREAM_OIDC_SCOPE?`);
  }
  if (idToken) {
    const claims = jwtClaims(idToken, "id_token");
    const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (claims.iss !== oidc.issuer) {
      throw new OidcError(`The id_token comes from ${claims.iss}, not ${oidc.issuer}: sign in again.`);
    }
    if (!audiences.includes(oidc.clientId)) {
      throw new OidcError(`The id_token is not meant for this viewer (client ${oidc.clientId}): sign in again.`);
    }
    if (nonce !== null && claims.nonce !== nonce) {
      throw new OidcError("The id_token does not belong to this sign-in (nonce mismatch): sign in again.");
    }
    if (previous?.subject && claims.sub !== previous.subject) {
      throw new OidcError("The renewed sign-in names another user: sign in again.");
    }
    subject = claims.sub ?? subject;
  }
  const token = oidc.token === "id_token" ? idToken : answer.access_token;
  if (!token) throw new OidcError(`The identity provider ${name} sent no ${oidc.token}.`);
  const lifetime = lifetimeMs(oidc, answer, token);
  if (lifetime !== null && lifetime <= EXPIRY_SLACK_MS) {
    throw new OidcError(`The identity provider ${name} sent a token that expires at once: check its token lifetimes.`);
  }
  const now = Date.now();
  const session = {
    issuer: oidc.issuer,
    clientId: oidc.clientId,
    kind: oidc.token,
    token,
    subject,
    receivedAtMs: now,
    expiresAtMs: lifetime === null ? null : now + lifetime,
    // Rotated refresh tokens replace the old one; a provider that does not rotate keeps it valid.
    refreshToken: answer.refresh_token || previous?.refreshToken || null,
    idToken: idToken || previous?.idToken || null,
  };
  sessionStorage.setItem(SESSION, JSON.stringify(session));
  return session;
}

/** This tab's session for this provider and client (expired or not), or null. */
export function storedSession(oidc) {
  let session = null;
  try {
    session = JSON.parse(sessionStorage.getItem(SESSION));
  } catch { /* unreadable: none */ }
  if (!session || session.issuer !== oidc.issuer || session.clientId !== oidc.clientId || session.kind !== oidc.token) {
    return null;
  }
  return session;
}

/** True while the session's token has some life left. */
export function isUsable(session) {
  return session.expiresAtMs === null || Date.now() < session.expiresAtMs - EXPIRY_SLACK_MS;
}

export function forgetSession() {
  sessionStorage.removeItem(SESSION);
  sessionStorage.removeItem(PENDING);
}

// --- The flow -------------------------------------------------------------------------------

/** The page's own address without its query: what the provider must send the browser back to. */
export function redirectUri() {
  return location.origin + location.pathname.replace(/index\.html$/, "");
}

function answerIn(search) {
  const params = new URLSearchParams(search);
  return params.has("state") && (params.has("code") || params.has("error")) ? params : null;
}

function readPending() {
  try {
    return JSON.parse(sessionStorage.getItem(PENDING));
  } catch {
    return null;
  }
}

/** Takes the provider's answer out of the address (history.replaceState: a reload or the back
 * button never replays a code) and restores what the address held before the sign-in. */
function cleanAddress(returnTo) {
  const params = new URLSearchParams(location.search);
  for (const name of ANSWER_PARAMS) params.delete(name);
  const rest = params.toString();
  const address = returnTo ?? (rest ? `?${rest}` : "") + location.hash;
  history.replaceState(history.state, "", location.pathname + address);
}

// The answer to a sign-in this tab started leaves the address as soon as this module loads, before
// the app reads its own parameters (?room=…, restored from before the sign-in); completeSignIn
// takes it from here.
let captured = answerIn(location.search);
if (captured && readPending()) cleanAddress(readPending().returnTo);
else captured = null;

/** True when the page was loaded with the provider's answer to a sign-in. */
export function isCallback() {
  return captured !== null || answerIn(location.search) !== null;
}

/** Sends the browser to the provider to sign in; the returned promise never settles (the page
 * goes away) unless the provider cannot be used, then it rejects with an OidcError. */
export async function beginSignIn(oidc) {
  if (!globalThis.crypto?.subtle) {
    throw new OidcError("Signing in needs this page over https: the browser offers no WebCrypto (for PKCE) on plain http.");
  }
  const provider = await discover(oidc);
  const pending = {
    issuer: oidc.issuer,
    state: randomText(16),
    nonce: randomText(16),
    verifier: randomText(32),  // 43 characters of [A-Za-z0-9_-]: RFC 7636 4.1
    redirectUri: redirectUri(),
    returnTo: location.search + location.hash,  // e.g. ?stream=…, restored on the way back
    startedAtMs: Date.now(),
  };
  const url = new URL(provider.authorization_endpoint);
  for (const [name, value] of Object.entries(oidc.authParams || {})) url.searchParams.set(name, value);
  const params = {
    response_type: "code",
    client_id: oidc.clientId,
    redirect_uri: pending.redirectUri,
    scope: oidc.scope,
    state: pending.state,
    nonce: pending.nonce,
    code_challenge: await s256(pending.verifier),
    code_challenge_method: "S256",
  };
  for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
  sessionStorage.setItem(PENDING, JSON.stringify(pending));
  location.assign(url.href);
  return new Promise(() => {});
}

/** Completes the sign-in whose answer the page was loaded with; resolves with the new session. */
export async function completeSignIn(oidc) {
  const answer = captured ?? new URLSearchParams(location.search);
  const pending = readPending();
  sessionStorage.removeItem(PENDING);  // one answer per sign-in
  if (captured) captured = null;
  else cleanAddress(pending?.returnTo);
  const name = providerName(oidc);
  if (!pending || pending.issuer !== oidc.issuer || pending.state !== answer.get("state")) {
    throw new OidcError("This sign-in answer does not belong to a sign-in started in this tab (state mismatch): sign in again.");
  }
  if (Date.now() - pending.startedAtMs > PENDING_MAX_AGE_MS) {
    throw new OidcError("The sign-in took too long to come back: sign in again.");
  }
  if (answer.has("iss") && answer.get("iss") !== oidc.issuer) {
    throw new OidcError(`The sign-in answer comes from ${answer.get("iss")}, not ${oidc.issuer}: sign in again.`);
  }
  if (answer.has("error")) {
    const code = answer.get("error");
    const reason = answer.get("error_description") || ERROR_TEXT[code] || code;
    throw new OidcError(`Sign-in at ${name} was refused: ${reason} (${code}).`, code);
  }
  const tokens = await tokenRequest(oidc, {
    grant_type: "authorization_code",
    code: answer.get("code"),
    redirect_uri: pending.redirectUri,
    client_id: oidc.clientId,
    code_verifier: pending.verifier,
  }, "The sign-in was refused by");
  return keep(oidc, tokens, { nonce: pending.nonce });
}

/** A new session from the session's refresh token (OIDC Core 12). */
export async function renew(oidc, session) {
  if (!session.refreshToken) throw new OidcError("Your sign-in has expired: sign in again.");
  const tokens = await tokenRequest(oidc, {
    grant_type: "refresh_token",
    refresh_token: session.refreshToken,
    client_id: oidc.clientId,
  }, "Your sign-in could not be renewed by");
  return keep(oidc, tokens, { previous: session });
}

let renewal = null;

/** Keeps the session fresh: renews it shortly before it expires (`onRenewed(session)`), or,
 * without a refresh token or once renewing has failed for good, calls `onLost(error)` when it
 * expires. One session is kept fresh at a time; `stopKeepingFresh()` ends it. */
export function keepFresh(oidc, session, { onRenewed, onLost }) {
  stopKeepingFresh();
  const plan = (current) => {
    if (current.expiresAtMs === null) return;  // unknown: until the edge refuses it
    const lifetime = current.expiresAtMs - current.receivedAtMs;
    const due = current.refreshToken
      ? current.expiresAtMs - Math.min(RENEW_AHEAD_MAX_MS, lifetime * RENEW_AHEAD_SHARE)
      : current.expiresAtMs - EXPIRY_SLACK_MS;
    renewal = setTimeout(() => attempt(current), Math.max(0, due - Date.now()));
  };
  const attempt = async (current) => {
    renewal = null;
    if (!current.refreshToken) {
      forgetSession();
      onLost(new OidcError("Your sign-in has expired: sign in again."));
      return;
    }
    try {
      const next = await renew(oidc, current);
      plan(next);
      onRenewed(next);
    } catch (error) {
      const left = current.expiresAtMs - Date.now();
      if (error.code === "invalid_grant" || error.code === "invalid_client" || left <= 2 * EXPIRY_SLACK_MS) {
        // The provider will not renew it (signed out, revoked): use the token while it lasts.
        const lasting = { ...current, refreshToken: null };
        if (left > EXPIRY_SLACK_MS) {
          sessionStorage.setItem(SESSION, JSON.stringify(lasting));
          plan(lasting);
        } else {
          forgetSession();
          onLost(error);
        }
      } else {
        renewal = setTimeout(() => attempt(current), Math.min(RENEW_RETRY_MS, left / 2));
      }
    }
  };
  plan(session);
}

export function stopKeepingFresh() {
  clearTimeout(renewal);
  renewal = null;
}
