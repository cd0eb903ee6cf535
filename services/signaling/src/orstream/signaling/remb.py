"""The packetizer each peer's sender uses: packetize an AU once for all peers, catch REMB.

aiortc's ``RTCRtpSender`` owns one H.264 "encoder" per peer and, for pre-encoded AUs, only calls
its ``pack(packet)`` (split the Annex B stream into NAL units, then STAP-A/FU-A payloads). Every
peer of a fan-out sends the same AUs, so the edge gives each sender a packetizer that asks the
AU first: the first peer to send an AU packetizes it and leaves the payloads on the AU, and the
others reuse them (``AccessUnit.rtp``). The payloads are the same for every peer; sequence
numbers, SSRC, timestamps offset and header extensions stay per peer in aiortc.

aiortc also hands REMB (receiver estimated maximum bitrate) only to that encoder
(``target_bitrate``); the packetizer records it on the peer's track, for the encoder's
interest. Like the PLI/FIR hook this relies on aiortc internals (``RTCRtpSender.__encoder``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import av
from aiortc import RTCRtpSender
from aiortc.codecs.h264 import H264Encoder as H264Packetizer

from orstream.signaling.track import AccessUnitTrack, RtpPayloads


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
