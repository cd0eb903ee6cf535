"""The RTP fixed header (RFC 3550 section 5.1), as far as a receiver of ST 2110 flows needs it.

::

     0                   1                   2                   3
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    |                           timestamp                           |
    |                             SSRC                              |
    |  CSRC list (CC x 32 bits) | header extension if X (RFC 8285)  |

The hot receive loops unpack with :data:`FIXED` themselves; :func:`payload_offset` is the one
place that knows where the payload starts, and :class:`RtpError` says why a datagram is refused.
"""

from __future__ import annotations

import struct

#: First byte, second byte, sequence number, timestamp, SSRC.
FIXED = struct.Struct("!BBHII")
FIXED_BYTES = 12
VERSION_BITS = 0x80
MARKER = 0x80
#: Wrap-around of the 16-bit RTP sequence number.
SEQ_MOD = 1 << 16


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet of the flow."""


def payload_offset(packet: bytes | bytearray | memoryview, length: int) -> tuple[int, int]:
    """Start and end of the payload of an RTP packet of ``length`` bytes (CSRCs, extension and
    padding skipped)."""
    if length < FIXED_BYTES:
        raise RtpError(f"{length}-byte datagram is shorter than an RTP header")
    b0 = packet[0]
    if b0 & 0xC0 != VERSION_BITS:
        raise RtpError(f"RTP version {b0 >> 6}, expected 2")
    start = FIXED_BYTES + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in 32-bit words
        if start + 4 > length:
            raise RtpError("RTP header extension truncated")
        words = (packet[start + 2] << 8) | packet[start + 3]
        start += 4 + 4 * words
    end = length
    if b0 & 0x20:  # padding: last byte says how much
        end -= packet[length - 1]
    if start > end:
        raise RtpError("RTP header, extension or padding longer than the datagram")
    return start, end
