"""What the edge changes in each peer's aiortc sender: packetize an AU once for all peers, catch
REMB, and a cheaper clock for the per-packet timestamps.

aiortc's ``RTCRtpSender`` owns one H.264 "encoder" per peer and, for pre-encoded AUs, only calls
its ``pack(packet)`` (split the Annex B stream into NAL units, then STAP-A/FU-A payloads). Every
peer of a fan-out sends the same AUs, so the edge gives each sender a packetizer that asks the
AU first: the first peer to send an AU packetizes it and leaves the payloads on the AU, and the
others reuse them (``AccessUnit.rtp``). The payloads are the same for every peer; sequence
numbers, SSRC, timestamps offset and header extensions stay per peer in aiortc.

aiortc also hands REMB (receiver estimated maximum bitrate) only to that encoder
(``target_bitrate``); the packetizer records it on the peer's track, for the encoder's
interest. Like the PLI/FIR hook this relies on aiortc internals (``RTCRtpSender.__encoder``).

For every RTP packet, aiortc's sender reads the wall clock as an NTP timestamp twice (the
abs-send-time header extension and the next sender report) through ``aiortc.clock``, which
builds and subtracts ``datetime`` objects each time: about a tenth of the edge's CPU per packet.
:func:`ntp_time` returns the same 32.32 fixed-point value from ``time.time_ns()``; the first
hooked sender installs it for the process (aiortc looks it up on its module at each call).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import aiortc.clock
import av
from aiortc import RTCRtpSender
from aiortc.codecs.h264 import H264Encoder as H264Packetizer

from orstream.signaling.track import AccessUnitTrack, RtpPayloads

#: Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_UNIX_OFFSET_S = 2_208_988_800
NS_PER_S = 1_000_000_000


def ntp_time() -> int:
    """Now as a 64-bit NTP timestamp (seconds since 1900, 32.32 fixed point)."""
    seconds, ns = divmod(time.time_ns(), NS_PER_S)
    return ((seconds + NTP_UNIX_OFFSET_S) << 32) | ((ns << 32) // NS_PER_S)


class RembRecordingPacketizer(H264Packetizer):
    #: Reuse the payloads of the AU's first peer (False: every peer packetizes, as aiortc does;
    #: the fan-out bench measures both).
    share_packetization: ClassVar[bool] = True

    def __init__(self, track: AccessUnitTrack) -> None:
        super().__init__()
        self._track = track

    def pack(self, packet: av.Packet[Any]) -> RtpPayloads:
        unit = self._track.in_flight
        if unit is None or unit.packet is not packet or not self.share_packetization:
            return super().pack(packet)
        if unit.rtp is None:
            unit.rtp = super().pack(packet)
        return unit.rtp

    @property
    def target_bitrate(self) -> int:
        return self._track.remb_bps

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self._track.remb_bps = int(bitrate)


def record_remb(sender: RTCRtpSender, track: AccessUnitTrack) -> None:
    """Give ``sender`` the packetizer of ``track`` (before it sends its first AU)."""
    sender._RTCRtpSender__encoder = RembRecordingPacketizer(track)  # type: ignore[attr-defined]
    aiortc.clock.current_ntp_time = ntp_time
