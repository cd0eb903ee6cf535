"""ICE configuration for aiortc peer connections on the edge.

aiortc falls back to a public STUN server when given no ICE servers, which a closed hospital
network cannot reach and which would stall every answer; the edge always passes its own list.
"""

from __future__ import annotations

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer


def configuration(ice_servers: list[str]) -> RTCConfiguration:
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in ice_servers])


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
