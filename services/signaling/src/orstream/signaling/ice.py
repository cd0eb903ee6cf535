"""ICE configuration for aiortc peer connections on the edge.

aiortc falls back to a public STUN server when given no ICE servers, which a closed hospital
network cannot reach and which would stall every answer; the edge always passes its own list.
"""

from __future__ import annotations

from collections.abc import Sequence

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy

from orstream.signaling.turn import IceServer


def configuration(
    ice_servers: Sequence[str | IceServer], *, relay_only: bool = False
) -> RTCConfiguration:
    """aiortc's configuration from plain URLs or :class:`IceServer` values with credentials.

    aiortc uses the first STUN and the first TURN URL it can (UDP or TCP TURN only).
    ``relay_only`` gathers relay candidates alone, as a browser's ``iceTransportPolicy: "relay"``.
    """
    return RTCConfiguration(
        iceServers=[_rtc_ice_server(server) for server in ice_servers],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL,
    )


def _rtc_ice_server(server: str | IceServer) -> RTCIceServer:
    if isinstance(server, str):
        return RTCIceServer(urls=server)
    return RTCIceServer(
        urls=list(server.urls), username=server.username, credential=server.credential
    )


def advertise_only(addresses: list[str]) -> None:
    """Make this process's ICE agents offer host candidates on ``addresses`` only.

    aioice has no setting for it and never offers loopback; a deployment pins the address a
    node is reachable on, and tests on one machine pin 127.0.0.1. Process-wide by design: one
    edge process has one network identity.
    """
    if not addresses:
        return
    pinned = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in pinned if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses
