"""UDP sockets for RTP flows: unicast or multicast (any-source or source-specific), big buffers.

A 720p50 10-bit flow is ~115 MB/s: the kernel's default receive buffer (~200 KB) holds under
2 ms of it, so any scheduling hiccup would lose packets. The socket asks for
:data:`RECEIVE_BUFFER_BYTES`, forcing past ``net.core.rmem_max`` when the process may
(CAP_NET_ADMIN), and logs what it got otherwise so an operator can raise the sysctl.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import sys

from orstream.ingest.sdp import RtpFlow

log = logging.getLogger(__name__)

RECEIVE_BUFFER_BYTES = 64 * 1024 * 1024
#: Below this the socket is likely to drop packets of a full-rate raw flow.
RECEIVE_BUFFER_WARN_BYTES = 8 * 1024 * 1024
#: Linux's IP_ADD_SOURCE_MEMBERSHIP (Python's socket module does not export it).
IP_ADD_SOURCE_MEMBERSHIP = getattr(socket, "IP_ADD_SOURCE_MEMBERSHIP", 39)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def open_flow_socket(
    flow: RtpFlow, interface: str = "0.0.0.0", buffer_bytes: int = RECEIVE_BUFFER_BYTES
) -> socket.socket:
    """A non-blocking socket bound for ``flow``, joined to its group (with its sources) if any."""
    family = socket.AF_INET6 if ipaddress.ip_address(flow.address).version == 6 else socket.AF_INET
    if family == socket.AF_INET6:
        raise OSError("IPv6 flows are not supported yet; use an IPv4 destination")
    sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _grow_receive_buffer(sock, buffer_bytes)
        if flow.multicast:
            # Bind to the group so only this group's datagrams arrive on this port.
            sock.bind((flow.address, flow.port))
            group = socket.inet_aton(flow.address)
            iface = socket.inet_aton(interface)
            if flow.sources:
                for source in flow.sources:
                    # struct ip_mreq_source on Linux: multiaddr, interface, sourceaddr
                    mreq = group + iface + socket.inet_aton(source)
                    sock.setsockopt(socket.IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, mreq)
            else:
                sock.setsockopt(
                    socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4s", group, iface)
                )
        else:
            sock.bind((interface, flow.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _grow_receive_buffer(sock: socket.socket, want: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, want)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if got < RECEIVE_BUFFER_WARN_BYTES:
        log.warning(
            "UDP receive buffer is %d KiB (asked %d KiB): a raw video flow may lose packets; "
            "raise net.core.rmem_max or grant CAP_NET_ADMIN",
            got // 1024,
            want // 1024,
        )
