"""The encoder's small decisions: when to force an IDR, what is watched, at what size and rate,
and which H.264 implementation actually opens."""

from __future__ import annotations

import logging

import av
import numpy as np
import pytest

from orstream.common.messages import Interest
from orstream.encoder.codec import EncoderOpenError
from orstream.encoder.h264 import H264Encoder, open_h264
from orstream.encoder.interest import InterestTable
from orstream.encoder.keyframes import KeyframePolicy
from orstream.encoder.renditions import bitrate_changed, output_size, target_bitrate
from orstream.encoder.settings import Rendition

MS = 1_000_000


def test_a_keyframe_request_forces_the_next_frame() -> None:
    policy = KeyframePolicy(0.2)
    assert not policy.force_now(1000 * MS)
    assert policy.request()
    assert policy.force_now(1000 * MS)
    assert not policy.force_now(1020 * MS), "one request, one IDR"


def test_requests_inside_the_interval_are_coalesced_and_deferred_not_dropped() -> None:
    policy = KeyframePolicy(0.2)
    policy.request()
    assert policy.force_now(1000 * MS)
    assert policy.request()
    assert not policy.request(), "a second request while one is pending adds nothing"
    assert not policy.force_now(1020 * MS)
    assert not policy.force_now(1180 * MS)
    assert policy.force_now(1200 * MS), "deferred to the end of the 200 ms interval"
    assert not policy.force_now(1220 * MS)


def test_an_idr_that_comes_anyway_answers_pending_requests() -> None:
    policy = KeyframePolicy(0.2)
    policy.request()
    policy.keyframe_sent(1000 * MS)
    assert not policy.force_now(1500 * MS)


def test_interest_is_the_union_of_watchers_until_each_lapses() -> None:
    table = InterestTable()
    table.update(Interest("edge-a", {"src": 0}, ttl_ms=2000), now_s=10.0)
    table.update(Interest("edge-b", {"360p": 500_000}, ttl_ms=2000), now_s=11.0)
    assert table.wanted(11.5) == {"src": 0, "360p": 500_000}
    assert table.wanted(12.5) == {"360p": 500_000}, "edge-a went silent for its TTL"
    assert table.wanted(13.5) == {}
    table.update(Interest("edge-a", {"src": 0}), now_s=20.0)
    table.update(Interest("edge-a", {}), now_s=20.1)
    assert table.wanted(20.2) == {}, "an empty map withdraws at once"


def test_a_rendition_takes_the_best_estimate_and_no_limit_wins() -> None:
    table = InterestTable()
    table.update(Interest("a", {"src": 1_000_000}), now_s=0)
    table.update(Interest("b", {"src": 2_500_000}), now_s=0)
    assert table.wanted(1) == {"src": 2_500_000}
    table.update(Interest("c", {"src": 0}), now_s=0)
    assert table.wanted(1) == {"src": 0}, "a watcher without an estimate leaves the rate alone"


def test_rendition_sizes_keep_the_aspect_ratio_and_never_scale_up() -> None:
    p360 = Rendition(name="360p", height=360)
    assert output_size(p360, 1920, 1080) == (640, 360)
    assert output_size(p360, 1280, 720) == (640, 360)
    assert output_size(p360, 720, 576) == (450, 360)
    assert output_size(p360, 640, 360) == (640, 360)
    assert output_size(p360, 320, 240) == (320, 240)
    assert output_size(Rendition(name="src"), 1280, 720) == (1280, 720)
    w, h = output_size(Rendition(name="x", height=101), 1000, 1000)
    assert w % 2 == 0 and h % 2 == 0


def test_watchers_estimates_lower_the_bitrate_within_bounds() -> None:
    r = Rendition(name="src", bitrate_bps=4_000_000)
    assert target_bitrate(r, 0, 0.25) == 4_000_000
    assert target_bitrate(r, 10_000_000, 0.25) == 4_000_000
    assert target_bitrate(r, 2_000_000, 0.25) == 2_000_000
    assert target_bitrate(r, 300_000, 0.25) == 1_000_000
    assert not bitrate_changed(4_000_000, 3_500_000)
    assert bitrate_changed(4_000_000, 2_000_000)


def _frame(width: int, height: int) -> av.VideoFrame:
    yy, xx = np.mgrid[0 : height * 3 // 2, 0:width]
    frame = av.VideoFrame.from_ndarray(((xx + yy) % 256).astype(np.uint8), format="yuv420p")
    frame.pts = 0
    return frame


@pytest.mark.parametrize("implementation", ["h264_nvenc", "h264_qsv", "h264_vaapi"])
def test_a_hardware_encoder_that_does_not_open_falls_back_to_libx264_with_a_log_line(
    implementation: str, caplog: pytest.LogCaptureFixture
) -> None:
    try:
        hardware = H264Encoder(320, 180, 25.0, 500_000, 1.0, implementation=implementation)
    except EncoderOpenError:
        hardware = None
    if hardware is not None:
        pytest.skip(f"{implementation} opens on this machine; nothing falls back")
    with caplog.at_level(logging.WARNING):
        encoder = open_h264(implementation, 320, 180, 25.0, 500_000, 1.0)
    assert encoder.implementation == "libx264"
    assert f"{implementation} unavailable" in caplog.text
    assert "falling back to libx264" in caplog.text
    units = encoder.encode(_frame(320, 180), False)
    assert units and units[0].key


def test_high_profile_is_there_when_asked_for() -> None:
    encoder = open_h264("libx264", 320, 180, 25.0, 500_000, 1.0, profile="high")
    sps = encoder.encode(_frame(320, 180), False)[0].data
    assert sps[4] & 0x1F == 7 and sps[5] == 100, "SPS with profile_idc 100 (High)"


def test_an_encoder_that_cannot_open_says_why() -> None:
    with pytest.raises(EncoderOpenError, match="did not open"):
        H264Encoder(321, 181, 25.0, 500_000, 1.0)
