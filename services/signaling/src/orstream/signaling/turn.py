"""ICE servers for a session, with TURN credentials minted from a secret shared with coturn.

The TURN REST API scheme (draft-uberti-behave-turn-rest-00 §2.2; coturn's ``use-auth-secret`` +
``static-auth-secret``): the edge and the TURN server share one secret, the edge hands each
session a username that carries its own expiry and a password derived from it, and the TURN
server checks both without asking anyone::

    username   = "<expiry, unix seconds>:<user>"
    credential = base64(HMAC-SHA1(secret, username))

The list reaches a browser two ways, both rendered here from the same :class:`IceServer` values:

    ice_servers_for(settings, user, expires_at) ─┬─ rtc_ice_servers_json()  GET …/ice-servers
                                                 └─ link_header_values()    WHEP ``Link`` headers
    edge_ice_servers(settings, expires_at) ───────── ice.configuration()    the edge's own aiortc
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orstream.signaling.settings import SignalingSettings

#: coturn's default ``rest-api-separator`` between the expiry and the user.
REST_API_SEPARATOR = ":"
#: A credential's longest life when the session would outlive it; the draft recommends one day.
DEFAULT_TURN_TTL_S = 86_400
#: STUN's USERNAME attribute holds fewer than 513 bytes (RFC 8489 §14.3).
MAX_USERNAME_BYTES = 512

STUN_SCHEMES = ("stun:", "stuns:")
TURN_SCHEMES = ("turn:", "turns:")
# RFC 7064 / RFC 7065 URIs (host, IPv4 or bracketed IPv6, optional port; TURN: ?transport=).
_HOST = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?"
_STUN_URL = re.compile(rf"stuns?:{_HOST}")
_TURN_URL = re.compile(rf"turns?:{_HOST}(\?transport=(udp|tcp))?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class IceServer:
    """One ``RTCIceServer``: URLs sharing one set of credentials (none for STUN)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


def turn_username(user: str, expires_at: int) -> str:
    """The REST API username: expiry first, so coturn reads it even if ``user`` has a colon."""
    if not user or _CONTROL.search(user):
        raise ValueError(f"TURN user {user!r} is empty or has control characters")
    username = f"{expires_at}{REST_API_SEPARATOR}{user}"
    if len(username.encode()) > MAX_USERNAME_BYTES:
        raise ValueError(f"TURN username longer than {MAX_USERNAME_BYTES} bytes")
    return username


def turn_credential(secret: str, username: str) -> str:
    """The password coturn expects for ``username``: base64(HMAC-SHA1(secret, username))."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def credential_expiry(expires_at: int, ttl_s: int, now_s: float) -> int:
    """When a session's credential stops working: with its token, but never beyond the TTL."""
    return min(expires_at, int(now_s) + ttl_s)


def ice_servers_for(
    settings: SignalingSettings, user: str, expires_at: int, *, now_s: float | None = None
) -> list[IceServer]:
    """The ICE servers a browser session of ``user`` gets (``expires_at``: its token's ``exp``).

    STUN URLs come without credentials; TURN URLs with one credential for this session.
    """
    return _servers(settings, settings.stun_urls, settings.turn_urls, user, expires_at, now_s)


def edge_ice_servers(
    settings: SignalingSettings, expires_at: int, *, now_s: float | None = None
) -> list[IceServer]:
    """The edge's own ``ice_servers`` for one peer connection, TURN URLs with credentials."""
    stun = [url for url in settings.ice_servers if url.startswith(STUN_SCHEMES)]
    turn = [url for url in settings.ice_servers if url.startswith(TURN_SCHEMES)]
    return _servers(settings, stun, turn, settings.edge_id, expires_at, now_s)


def _servers(
    settings: SignalingSettings,
    stun_urls: list[str],
    turn_urls: list[str],
    user: str,
    expires_at: int,
    now_s: float | None,
) -> list[IceServer]:
    servers = [IceServer(urls=tuple(stun_urls))] if stun_urls else []
    if turn_urls:
        if settings.turn_secret is None:
            raise ValueError("TURN URLs need ORSTREAM_TURN_SECRET to mint credentials")
        now = time.time() if now_s is None else now_s
        username = turn_username(user, credential_expiry(expires_at, settings.turn_ttl_s, now))
        credential = turn_credential(settings.turn_secret.get_secret_value(), username)
        servers.append(IceServer(urls=tuple(turn_urls), username=username, credential=credential))
    return servers


def rtc_ice_servers_json(servers: Iterable[IceServer]) -> list[dict[str, str | list[str]]]:
    """The browser's ``RTCConfiguration.iceServers``: ``[{"urls", "username", "credential"}]``."""
    rendered: list[dict[str, str | list[str]]] = []
    for server in servers:
        entry: dict[str, str | list[str]] = {"urls": list(server.urls)}
        if server.username is not None and server.credential is not None:
            entry["username"] = server.username
            entry["credential"] = server.credential
        rendered.append(entry)
    return rendered


def link_header_values(servers: Iterable[IceServer]) -> list[str]:
    """One WHEP ``Link`` header value per URL (draft-ietf-wish-whep, "ICE server configuration").

    ``<turn:host:3478?transport=udp>; rel="ice-server"; username="…"; credential="…";
    credential-type="password"``; send each as its own ``Link`` header or join them with ", ".
    """
    values: list[str] = []
    for server in servers:
        params = ['rel="ice-server"']
        if server.username is not None and server.credential is not None:
            params += [
                f"username={_quoted(server.username)}",
                f"credential={_quoted(server.credential)}",
                'credential-type="password"',
            ]
        values += [f"<{url}>; " + "; ".join(params) for url in server.urls]
    return values


def _quoted(value: str) -> str:
    """An HTTP quoted-string (RFC 9110 §5.6.4); no control character may reach a header."""
    if _CONTROL.search(value):
        raise ValueError(f"{value!r} has control characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_ice_urls(
    stun_urls: list[str], turn_urls: list[str], ice_servers: list[str], has_secret: bool
) -> None:
    """Settings validation: well-formed URLs of the right kind, and a secret for any TURN URL."""
    for name, urls, pattern in (
        ("stun_urls", stun_urls, _STUN_URL),
        ("turn_urls", turn_urls, _TURN_URL),
    ):
        bad = [url for url in urls if not pattern.fullmatch(url)]
        if bad:
            raise ValueError(f"{name}: not a {name.split('_')[0].upper()} URL: {bad}")
    bad = [u for u in ice_servers if not (_STUN_URL.fullmatch(u) or _TURN_URL.fullmatch(u))]
    if bad:
        raise ValueError(f"ice_servers: not a STUN or TURN URL: {bad}")
    turn = turn_urls + [url for url in ice_servers if url.startswith(TURN_SCHEMES)]
    if turn and not has_secret:
        raise ValueError(
            f"TURN URLs {turn} are configured but ORSTREAM_TURN_SECRET is not: TURN credentials "
            "are minted from coturn's static-auth-secret; set it or remove the TURN URLs"
        )
