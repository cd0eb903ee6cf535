// Sign-in: a token from the address (development links printed by `orstream up`), the one kept
// for this tab, or one pasted into the form. Resolves with the bearer token to use.
const KEY = "orstream.token";
const $ = (id) => document.getElementById(id);

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
}

/** Show the sign-in form and resolve with the token the user gives. */
export function askForToken(config) {
  const form = $("signin");
  form.hidden = false;
  $("token").focus();
  return new Promise((resolve) => {
    form.addEventListener("submit", function submitted(event) {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      form.removeEventListener("submit", submitted);
      sessionStorage.setItem(KEY, token);
      form.hidden = true;
      resolve(token);
    });
  });
}

/** The token to use now: from the address, from this tab's storage, or asked for. */
export async function signIn(config) {
  return tokenFromLocation() || sessionStorage.getItem(KEY) || askForToken(config);
}
