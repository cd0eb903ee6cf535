"""Settings of the signaling/edge service (``ORSTREAM_*``)."""

from __future__ import annotations

import os
import socket
from typing import Self

from pydantic import Field, SecretStr, model_validator

from orstream.common.config import CommonSettings
from orstream.signaling.turn import DEFAULT_TURN_TTL_S, check_ice_urls

DEFAULT_HTTP_PORT = 8081
#: AUs queued per peer before it is declared slow and skipped to the next keyframe (~160 ms).
DEFAULT_PEER_QUEUE_AUS = 8
#: A peer that has not connected this long after its answer is reaped.
DEFAULT_CONNECT_TIMEOUT_S = 30.0
DEFAULT_KEYFRAME_REQUEST_INTERVAL_S = 0.2
#: How often the edge tells encoders which renditions it has peers on; they drop a rendition
#: after four silent intervals.
DEFAULT_INTEREST_INTERVAL_S = 0.5
#: How long the identity provider's keys are trusted before they are fetched again.
DEFAULT_JWKS_CACHE_S = 600.0
#: At most one JWKS fetch per this interval, however many unknown key ids arrive.
DEFAULT_JWKS_MIN_REFRESH_S = 30.0
#: Clock skew tolerated on ``exp``/``nbf``/``iat`` between the identity provider and the edge.
DEFAULT_JWT_LEEWAY_S = 30.0
#: WHEP requests per second a caller may sustain, and the burst it may spend at once.
DEFAULT_WHEP_RATE_PER_S = 2.0
DEFAULT_WHEP_BURST = 10


def default_edge_id() -> str:
    return f"edge-{socket.gethostname().split('.')[0]}-{os.getpid()}"


class SignalingSettings(CommonSettings):
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    #: Origins allowed to call the API from a browser (the viewer's origin).
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    #: STUN/TURN URLs offered to aiortc's ICE agent; empty: host candidates only (one LAN).
    ice_servers: list[str] = Field(default_factory=list)
    #: Advertise only these host addresses in ICE (e.g. a node IP, or 127.0.0.1 in tests);
    #: empty: every non-loopback interface.
    ice_host_addresses: list[str] = Field(default_factory=list)
    #: STUN URLs offered to browsers (``stun:host:3478``), without credentials.
    stun_urls: list[str] = Field(default_factory=list)
    #: TURN URLs offered to browsers (``turn:host:3478?transport=udp``) with credentials minted
    #: per session from ``turn_secret``.
    turn_urls: list[str] = Field(default_factory=list)
    #: coturn's ``static-auth-secret`` (TURN REST API); required by any TURN URL.
    turn_secret: SecretStr | None = None
    #: Longest life of a minted TURN credential; a session's ends earlier with its token.
    turn_ttl_s: int = Field(default=DEFAULT_TURN_TTL_S, ge=60)
    peer_queue_aus: int = Field(default=DEFAULT_PEER_QUEUE_AUS, ge=2, le=500)
    #: Streams one room session may carry (one transceiver each).
    max_room_streams: int = Field(default=8, ge=1, le=32)
    #: How often the ``stats`` DataChannel reports a session's numbers to its peer.
    stats_interval_s: float = Field(default=1.0, gt=0, le=60)
    connect_timeout_s: float = Field(default=DEFAULT_CONNECT_TIMEOUT_S, gt=0)
    keyframe_request_interval_s: float = Field(default=DEFAULT_KEYFRAME_REQUEST_INTERVAL_S, ge=0)
    interest_interval_s: float = Field(default=DEFAULT_INTEREST_INTERVAL_S, gt=0, le=5.0)
    #: This edge's name in ``.interest`` messages (unique among the edges of a site).
    edge_id: str = Field(default_factory=default_edge_id)
    #: Algorithms accepted on bearer tokens: asymmetric only, never ``none`` or ``HS*``.
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["ES256", "RS256", "EdDSA"])
    #: The OIDC provider's JWKS; empty (and no discovery): the local development key.
    jwks_url: str = ""
    #: Find the JWKS through ``<jwt_issuer>/.well-known/openid-configuration``.
    oidc_discovery: bool = False
    jwks_cache_s: float = Field(default=DEFAULT_JWKS_CACHE_S, gt=0)
    jwks_min_refresh_s: float = Field(default=DEFAULT_JWKS_MIN_REFRESH_S, ge=0)
    jwt_leeway_s: float = Field(default=DEFAULT_JWT_LEEWAY_S, ge=0, le=300)
    #: Claim naming the role; a dotted path reaches into objects (``realm_access.roles``).
    role_claim: str = "role"
    #: Optional claim narrowing the policy's rooms (globs over ``site/room``).
    rooms_claim: str = "rooms"
    whep_rate_per_s: float = Field(default=DEFAULT_WHEP_RATE_PER_S, gt=0)
    whep_burst: int = Field(default=DEFAULT_WHEP_BURST, ge=1)

    @model_validator(mode="after")
    def _check_ice_urls(self) -> Self:
        check_ice_urls(
            self.stun_urls, self.turn_urls, self.ice_servers, self.turn_secret is not None
        )
        return self
