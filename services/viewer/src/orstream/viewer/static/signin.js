// Sign-in: resolves with the bearer token the edge is sent. In order:
//  - a token handed over in the address (#token=…, the development links `orstream up` prints);
//  - with OIDC configured (config.oidc, see oidc.js): the provider's answer in the address
//    (?code=…&state=…) completed, or this tab's OIDC session while it lasts (renewed with its
//    refresh token if it has expired);
//  - the token pasted earlier in this tab;
//  - else the sign-in form #signin: with OIDC, a "Sign in with <provider>" button on top and
//    the paste box for development tokens behind "Use an access token instead".
//
// Errors never leave a blank page: a failed OIDC sign-in (the provider refused it, e.g.
// access_denied; a bad or replayed answer; an unreachable provider) is shown in #message with its
// reason, the form stays up, and signIn keeps waiting for the user. The app may show its own
// sign-in problems the same way with showSignInError(error).
//
// OIDC tokens are renewed shortly before they expire (refresh_token) or, when they cannot be,
// the user is sent back through the provider's sign-in. Every new token is announced on window
// as an "orstream:token" event (event.detail.token; null when the sign-in was lost);
// currentToken() is the newest one.
import {
  OidcError, beginSignIn, completeSignIn, forgetSession, isCallback, isUsable, keepFresh,
  providerName, renew, stopKeepingFresh, storedSession,
} from "./oidc.js";

const KEY = "orstream.token";
const $ = (id) => document.getElementById(id);
let current = null;

/** The newest token this page holds (null before sign-in or after it was lost). */
export function currentToken() {
  return current;
}

function announce(token) {
  current = token;
  dispatchEvent(new CustomEvent("orstream:token", { detail: { token } }));
  return token;
}

/** Shows a sign-in problem to the user in #message (its text, never markup). */
export function showSignInError(error) {
  const message = $("message");
  message.textContent = error instanceof Error ? error.message : String(error);
  message.dataset.from = "signin";
  message.hidden = false;
}

function clearSignInError() {
  const message = $("message");
  if (message.dataset.from !== "signin") return;  // the app's own message stays
  delete message.dataset.from;
  message.hidden = true;
}

/** The token handed over in the address fragment, moved out of the address bar at once. */
function tokenFromLocation() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (!token) return null;
  sessionStorage.setItem(KEY, token);
  history.replaceState(null, "", location.pathname + location.search);  // keep it out of history
  return token;
}

/** Forget the token (refused, expired or signed out) so the next sign-in asks again. */
export function forgetToken() {
  sessionStorage.removeItem(KEY);
  stopKeepingFresh();
  forgetSession();
  current = null;
}

/** The OIDC button at the top of the form, and the paste box moved into a <details> below it. */
function offerProvider(oidc, form) {
  if ($("signin-oidc")) return;
  const button = document.createElement("button");
  button.type = "button";
  button.id = "signin-oidc";
  button.textContent = `Sign in with ${providerName(oidc)}`;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await beginSignIn(oidc);  // the page goes to the provider
    } catch (error) {
      showSignInError(error);
      button.disabled = false;
    }
  });
  const details = document.createElement("details");
  details.id = "signin-paste";
  const summary = document.createElement("summary");
  summary.textContent = "Use an access token instead";
  const box = document.createElement("div");
  Object.assign(box.style, { display: "flex", flexDirection: "column", gap: ".5rem", marginTop: ".5rem" });
  const paste = [form.querySelector('label[for="token"]'), $("token"), form.querySelector("button:not([type=button])")];
  box.append(...paste.filter(Boolean));
  details.append(summary, box);
  const heading = form.firstElementChild?.matches("h1, h2, h3, legend") ? form.firstElementChild : null;
  if (heading) heading.after(button, details);
  else form.prepend(button, details);
}

/** Show the sign-in form and resolve with the token the user pastes; with OIDC the form also
 * offers the provider's sign-in, which leaves the page and comes back through signIn. */
export function askForToken(config) {
  const form = $("signin");
  if (config?.oidc) offerProvider(config.oidc, form);
  form.hidden = false;
  (config?.oidc ? $("signin-oidc") : $("token")).focus();
  return new Promise((resolve) => {
    form.addEventListener("submit", function submitted(event) {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      form.removeEventListener("submit", submitted);
      sessionStorage.setItem(KEY, token);
      form.hidden = true;
      clearSignInError();
      resolve(announce(token));
    });
  });
}

/** Keeps an OIDC session fresh; when it is lost, back through the provider's sign-in. */
function adopt(config, session) {
  keepFresh(config.oidc, session, {
    onRenewed: (renewed) => announce(renewed.token),
    onLost: async (error) => {
      announce(null);
      try {
        await beginSignIn(config.oidc);
      } catch (failure) {
        showSignInError(failure instanceof OidcError ? failure : error);
        askForToken(config);
      }
    },
  });
  return session.token;
}

/** The OIDC token of this tab, if it has one or the address completes a sign-in; null otherwise
 * (with the reason shown when something went wrong). */
async function oidcToken(config) {
  const oidc = config.oidc;
  try {
    let session;
    if (isCallback()) {
      session = await completeSignIn(oidc);
    } else {
      session = storedSession(oidc);
      if (session && !isUsable(session)) session = session.refreshToken ? await renew(oidc, session) : null;
    }
    return session ? adopt(config, session) : null;
  } catch (error) {
    forgetSession();
    showSignInError(error);
    return null;
  }
}

/** The token to use now: from the address, the OIDC sign-in, this tab's storage, or asked for. */
export async function signIn(config) {
  const token = tokenFromLocation()
    || (config?.oidc ? await oidcToken(config) : null)
    || sessionStorage.getItem(KEY)
    || await askForToken(config);
  return token === current ? token : announce(token);
}
