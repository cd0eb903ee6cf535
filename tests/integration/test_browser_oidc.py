"""Signing in to the viewer at the hospital's OpenID provider, in a real browser: Debian's
Chromium driven by Playwright, the whole stack (every service its own process) and the test
provider of the root conftest (``idp_factory``: Keycloak's paths, the Authorization Code flow
with PKCE, no login page).

The viewer is a public client with the viewer's URL as its redirect URI; the edge verifies the
provider's access tokens (discovery, JWKS) and reads the role from ``realm_access.roles``, as it
would behind Keycloak. Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from orstream.cli.stack import Stack, StackConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Idp

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CLIENT_ID = "orstream-viewer"
SESSION = "JSON.parse(sessionStorage.getItem('orstream.oidc.session'))"


@pytest.fixture(scope="module")
def provider(idp_factory: Callable[[], Idp]) -> Idp:
    return idp_factory()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, provider: Idp
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("browser-oidc")
    config = StackConfig(
        site=f"oi{uuid.uuid4().hex[:6]}",
        nats_url=nats_url,
        source="testpattern:?size=1280x720&fps=50",
        state_dir=tmp / "state",
        log_dir=tmp / "logs",
        ice_host_addresses=["127.0.0.1"],
    )
    stack = Stack(config)
    # What hospital IT registers at the provider: a public client, the viewer's URL to return to.
    provider.register(CLIENT_ID, f"{stack.viewer_url}/")
    with pytest.MonkeyPatch.context() as env:  # the services inherit this environment
        env.setenv("ORSTREAM_JWT_ISSUER", provider.issuer)
        env.setenv("ORSTREAM_OIDC_DISCOVERY", "true")
        env.setenv("ORSTREAM_JWT_AUDIENCE", provider.audience)
        env.setenv("ORSTREAM_ROLE_CLAIM", "realm_access.roles")
        env.setenv("ORSTREAM_OIDC_ISSUER", provider.issuer)
        env.setenv("ORSTREAM_OIDC_CLIENT_ID", CLIENT_ID)
        with stack:
            yield stack


@pytest.fixture
def idp(provider: Idp, stack: Stack) -> Idp:
    """The module's provider, back to its defaults for each test."""
    provider.access_token_ttl_s = 300
    provider.refresh_tokens = True
    provider.sign_in("alice", realm_access={"roles": ["offline_access", "student"]})
    provider.authorizations.clear()
    provider.token_requests.clear()
    return provider


def user(idp: Idp, stack: Stack, sub: str, role: str) -> None:
    """The user the provider signs in next: a Keycloak-style role list, this stack's rooms."""
    idp.sign_in(
        sub,
        name=sub.replace("-", " ").title(),
        realm_access={"roles": ["offline_access", "uma_authorization", role]},
        rooms=[f"{stack.config.site}/*"],
    )


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def sign_in_page(browser: Any, stack: Stack, query: str = "") -> Any:
    """The viewer opened without a token: its sign-in form, with the provider's button."""
    page = browser.new_page(viewport={"width": 1280, "height": 820})
    page.goto(f"{stack.viewer_url}/{query}")
    page.wait_for_selector("#signin-oidc", state="visible", timeout=15_000)
    return page


def wait_playing(page: Any, timeout_s: float = 30) -> None:
    """Frames arrive whose timecode the page reads, and they advance."""
    page.wait_for_function("Number(document.body.dataset.lastSeq) > 0", timeout=timeout_s * 1000)
    first = int(page.evaluate("document.body.dataset.lastSeq"))
    page.wait_for_function(f"Number(document.body.dataset.lastSeq) >= {first + 25}", timeout=10_000)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_signs_in_at_the_provider_and_plays(browser: Any, stack: Stack, idp: Idp) -> None:
    user(idp, stack, "dr-grey", "expert")
    page = sign_in_page(browser, stack, "?layout=grid")
    try:
        host = idp.issuer.split("/")[2]
        assert page.inner_text("#signin-oidc") == f"Sign in with {host}"
        assert not page.is_visible("#token"), "the paste box waits behind 'Use an access token'"
        shot(page, "viewer-oidc-signin.png")

        page.click("#signin-oidc")
        wait_playing(page)
        assert page.inner_text("#role") == "Identified"
        # The answer left the address; the page's own parameters came back (and the app saw them).
        assert page.url == f"{stack.viewer_url}/?layout=grid", page.url
        assert "layout-grid" in (page.get_attribute("#stage", "class") or "")
        shot(page, "viewer-oidc-playing.png")

        (asked,) = idp.authorizations
        assert asked["client_id"] == CLIENT_ID
        assert asked["redirect_uri"] == f"{stack.viewer_url}/"
        assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
        assert asked["scope"] == "openid profile" and asked["nonce"] and asked["state"]
        (exchange,) = idp.token_requests  # the provider checked the verifier against the challenge
        assert exchange["grant_type"] == "authorization_code"
        assert exchange["client_id"] == CLIENT_ID and "client_secret" not in exchange
        session = page.evaluate(SESSION)
        assert session["subject"] == "dr-grey" and session["kind"] == "access_token"
        assert session["expiresAtMs"] > time.time() * 1000 + 200_000
        assert page.evaluate("sessionStorage.getItem('orstream.oidc.pending')") is None

        # A reload keeps the tab's sign-in: no second trip to the provider.
        page.reload()
        wait_playing(page)
        assert len(idp.authorizations) == 1 and len(idp.token_requests) == 1
        assert page.inner_text("#role") == "Identified"
    finally:
        page.close()


def test_a_refused_sign_in_says_why_and_offers_it_again(
    browser: Any, stack: Stack, idp: Idp
) -> None:
    idp.refuse("access_denied", "Dr Who is not on today's theatre list")
    page = sign_in_page(browser, stack)
    try:
        page.click("#signin-oidc")
        page.wait_for_selector("#message:not([hidden])", timeout=15_000)
        text = page.inner_text("#message")
        assert "refused" in text, text
        assert "Dr Who is not on today's theatre list" in text and "(access_denied)" in text, text
        assert page.is_visible("#signin-oidc") and page.is_enabled("#signin-oidc")
        assert "error=" not in page.url and "state=" not in page.url, page.url
        assert idp.token_requests == [], "no code, no exchange"
        shot(page, "viewer-oidc-refused.png")

        # The provider lets the user in after all: the same button now works.
        user(idp, stack, "dr-who", "student")
        page.click("#signin-oidc")
        wait_playing(page)
        assert page.inner_text("#role") == "De-identified"
        assert page.is_hidden("#message")
    finally:
        page.close()


def test_a_replayed_answer_is_refused(browser: Any, stack: Stack, idp: Idp) -> None:
    """An address with a code this tab did not ask for (a link someone sent) is not signed in."""
    user(idp, stack, "dr-grey", "expert")
    page = sign_in_page(browser, stack)
    try:
        page.goto(f"{stack.viewer_url}/?code=stolen&state=guessed")
        page.wait_for_selector("#message:not([hidden])", timeout=15_000)
        assert "state mismatch" in page.inner_text("#message")
        assert page.is_visible("#signin-oidc")
        assert "code=" not in page.url
        assert idp.token_requests == [], "a code from elsewhere is never exchanged"
    finally:
        page.close()


def test_tokens_are_renewed_before_they_expire(browser: Any, stack: Stack, idp: Idp) -> None:
    idp.access_token_ttl_s = 16  # renewed after three quarters of its life: ~12 s
    user(idp, stack, "dr-yang", "expert")
    page = sign_in_page(browser, stack)
    try:
        page.click("#signin-oidc")
        wait_playing(page)
        page.evaluate(  # what an app does to follow its token
            "addEventListener('orstream:token', (e) => "
            "(globalThis.renewed = globalThis.renewed || []).push(e.detail.token))"
        )
        first = page.evaluate(SESSION)
        wait_for(
            lambda: any(r["grant_type"] == "refresh_token" for r in idp.token_requests),
            timeout_s=20,
            what="a refresh",
        )
        page.wait_for_function("(globalThis.renewed || []).length > 0", timeout=5_000)
        renewed = page.evaluate(SESSION)
        assert renewed["token"] != first["token"]
        assert renewed["expiresAtMs"] > first["expiresAtMs"]
        assert renewed["refreshToken"] != first["refreshToken"], "rotated refresh token kept"
        assert page.evaluate("globalThis.renewed") == [renewed["token"]]
        assert len(idp.authorizations) == 1, "renewed without a trip to the provider"
        refresh = next(r for r in idp.token_requests if r["grant_type"] == "refresh_token")
        assert refresh == {
            "grant_type": "refresh_token",
            "refresh_token": first["refreshToken"],
            "client_id": CLIENT_ID,
        }
    finally:
        page.close()


def test_without_a_refresh_token_an_expired_sign_in_goes_back_to_the_provider(
    browser: Any, stack: Stack, idp: Idp
) -> None:
    idp.access_token_ttl_s = 12
    idp.refresh_tokens = False
    user(idp, stack, "dr-bailey", "student")
    page = sign_in_page(browser, stack)
    try:
        page.click("#signin-oidc")
        wait_playing(page)
        first = page.evaluate(SESSION)
        assert first["refreshToken"] is None
        # Shortly before expiry the page goes back through the provider (whose session lets the
        # user straight through here) and comes back signed in with a new token.
        wait_for(lambda: len(idp.token_requests) == 2, timeout_s=20, what="a second sign-in")
        assert len(idp.authorizations) == 2
        page.wait_for_function(
            f"{SESSION}?.token && {SESSION}.token !== {json.dumps(first['token'])}",
            timeout=10_000,
        )
        wait_playing(page)
        assert page.inner_text("#role") == "De-identified"
        assert "code=" not in page.url
    finally:
        page.close()
