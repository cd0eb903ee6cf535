"""Settings of the viewer's static server (``ORSTREAM_*``)."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from orstream.common.config import CommonSettings
from orstream.common.subjects import TOKEN_PATTERN

DEFAULT_HTTP_PORT = 8080
DEFAULT_OIDC_SCOPE = "openid profile"
#: Authorization request parameters the viewer sets itself (RFC 6749 4.1.1, RFC 7636, OIDC Core
#: 3.1.2.1); ``oidc_auth_params`` may add others (``prompt``, ``audience``, ``kc_idp_hint``, …).
OIDC_PROTOCOL_PARAMS = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    }
)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses, where plain http stays on the machine."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ViewerSettings(CommonSettings):
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    #: Where browsers reach the edge's API (WHEP and the stream list).
    edge_url: str = "http://127.0.0.1:8081"
    room: str = Field(default="or1", pattern=TOKEN_PATTERN)
    stream: str = Field(default="endoscope", pattern=TOKEN_PATTERN)
    #: The OpenID provider browsers sign in at (its ``issuer``, e.g. a Keycloak realm's URL);
    #: None: no OIDC sign-in, tokens are pasted or handed over in the address.
    oidc_issuer: str | None = None
    #: The viewer's client at the provider: a public client (no secret) allowed the
    #: Authorization Code flow with PKCE (S256).
    oidc_client_id: str = ""
    oidc_scope: str = DEFAULT_OIDC_SCOPE
    #: Which token the viewer sends to the edge as its bearer token; the edge's
    #: ``ORSTREAM_JWT_AUDIENCE`` must match its ``aud`` (the client id for an ``id_token``).
    oidc_token: Literal["access_token", "id_token"] = "access_token"
    #: Further authorization request parameters as JSON, e.g. ``{"audience": "orstream"}``
    #: (Auth0) or ``{"prompt": "login"}``.
    oidc_auth_params: dict[str, str] = Field(default_factory=dict)

    @field_validator("oidc_issuer")
    @classmethod
    def _check_issuer(cls, issuer: str | None) -> str | None:
        if not issuer:
            return None
        url = urlsplit(issuer)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ValueError(f"oidc_issuer must be an https URL, not {issuer!r}")
        if url.scheme == "http" and not is_loopback(url.hostname):
            raise ValueError(
                f"oidc_issuer must use https (plain http only on loopback): {issuer!r}"
            )
        if url.query or url.fragment:
            raise ValueError(f"oidc_issuer has no query or fragment (OIDC Discovery 2): {issuer!r}")
        return issuer

    @field_validator("oidc_scope")
    @classmethod
    def _check_scope(cls, scope: str) -> str:
        if "openid" not in scope.split():
            raise ValueError(f"oidc_scope must include 'openid': {scope!r}")
        return scope

    @field_validator("oidc_auth_params")
    @classmethod
    def _check_auth_params(cls, params: dict[str, str]) -> dict[str, str]:
        if taken := sorted(OIDC_PROTOCOL_PARAMS & params.keys()):
            raise ValueError(f"oidc_auth_params may not set {', '.join(taken)}: the viewer does")
        return params

    @model_validator(mode="after")
    def _check_client(self) -> Self:
        if self.oidc_issuer and not self.oidc_client_id:
            raise ValueError("oidc_client_id is required with oidc_issuer")
        return self

    def browser_oidc(self) -> dict[str, Any] | None:
        """The sign-in settings the page reads from ``/config.json`` (None: OIDC is off)."""
        if self.oidc_issuer is None:
            return None
        return {
            "issuer": self.oidc_issuer,
            "clientId": self.oidc_client_id,
            "scope": self.oidc_scope,
            "token": self.oidc_token,
            "authParams": self.oidc_auth_params,
        }
