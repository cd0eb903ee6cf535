"""A rendition's output size, its encoder, and the bitrate its watchers can take."""

from __future__ import annotations

from orstream.encoder.codec import VideoEncoder
from orstream.encoder.h264 import open_h264
from orstream.encoder.settings import EncoderSettings, Rendition
from orstream.encoder.vp8 import VP8Encoder

#: A new bitrate is applied only when it differs this much from the current one (no flapping).
BITRATE_CHANGE_SHARE = 0.2


def output_size(rendition: Rendition, width: int, height: int) -> tuple[int, int]:
    """Even dimensions at the rendition's height, keeping the aspect ratio; never upscaled."""
    if rendition.height is None or rendition.height >= height:
        return width, height
    out_h = rendition.height - rendition.height % 2
    out_w = max(2, round(width * out_h / height / 2) * 2)
    return out_w, out_h


def target_bitrate(rendition: Rendition, estimate_bps: int, min_share: float) -> int:
    """The configured bitrate, lowered to what the watchers say they can take (0: no estimate),
    but not below ``min_share`` of it: a weak link should move to a smaller rendition instead."""
    if estimate_bps <= 0:
        return rendition.bitrate_bps
    floor = int(rendition.bitrate_bps * min_share)
    return max(floor, min(rendition.bitrate_bps, estimate_bps))


def bitrate_changed(current: int, wanted: int) -> bool:
    return abs(wanted - current) > current * BITRATE_CHANGE_SHARE


def open_encoder(
    rendition: Rendition,
    width: int,
    height: int,
    fps: float,
    bitrate_bps: int,
    settings: EncoderSettings,
) -> VideoEncoder:
    """Raises :class:`~orstream.encoder.codec.EncoderOpenError` when nothing will open."""
    if rendition.codec == "vp8":
        return VP8Encoder(
            width, height, fps, bitrate_bps, settings.keyframe_interval_s, threads=settings.threads
        )
    return open_h264(
        settings.h264_encoder,
        width,
        height,
        fps,
        bitrate_bps,
        settings.keyframe_interval_s,
        preset=settings.x264_preset,
        threads=settings.threads,
        profile=rendition.profile,
        vaapi_device=settings.vaapi_device,
    )
