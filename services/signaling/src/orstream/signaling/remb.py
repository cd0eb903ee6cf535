"""Catching a peer's REMB (receiver estimated maximum bitrate) from aiortc.

aiortc hands REMB only to the sender's encoder (``target_bitrate``), and with pre-encoded AUs
that encoder merely packetizes. The edge gives each sender a packetizer of its own whose
``target_bitrate`` setter records the estimate on the peer's track, for the encoder's interest.
Like the PLI/FIR hook this relies on aiortc internals (``RTCRtpSender.__encoder``).
"""

from __future__ import annotations

from aiortc import RTCRtpSender
from aiortc.codecs.h264 import H264Encoder as H264Packetizer

from orstream.signaling.track import AccessUnitTrack


class RembRecordingPacketizer(H264Packetizer):
    def __init__(self, track: AccessUnitTrack) -> None:
        super().__init__()
        self._track = track

    @property
    def target_bitrate(self) -> int:
        return self._track.remb_bps

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self._track.remb_bps = int(bitrate)


def record_remb(sender: RTCRtpSender, track: AccessUnitTrack) -> None:
    sender._RTCRtpSender__encoder = RembRecordingPacketizer(track)  # type: ignore[attr-defined]
