"""Sender SDPs: what is received is modelled exactly; what cannot be is refused with a reason."""

from __future__ import annotations

from fractions import Fraction

import pytest

from orstream.ingest.sdp import SdpError, parse_session, raw_video

# ST 2110-10 Annex B's example, as senders publish it (with a DICOM-RTV metadata flow beside it).
ANNEX_B = """v=0
o=- 123456 11 IN IP4 192.168.100.2
s=Example of a SMPTE ST2110-20 signal
i=this example is for 720p video at 59.94
t=0 0
a=recvonly
a=group:DUP primary secondary
m=video 50000 RTP/AVP 112
c=IN IP4 239.100.9.10/32
a=source-filter: incl IN IP4 239.100.9.10 192.168.100.2
a=rtpmap:112 raw/90000
a=fmtp:112 sampling=YCbCr-4:2:2; width=1280; height=720; exactframerate=60000/1001; depth=10; TCS=SDR; colorimetry=BT709; PM=2110GPM; SSN=ST2110-20:2017; TP=2110TPN;
a=ts-refclk:ptp=IEEE1588-2008:39-A7-94-FF-FE-07-CB-D0:37
a=mediaclk:direct=0
a=mid:primary
m=application 50010 RTP/AVP 104
c=IN IP4 239.100.9.11/32
a=rtpmap:104 dicom/90000
"""


def _with_fmtp(fmtp: str) -> str:
    return ANNEX_B.replace(ANNEX_B.split("a=fmtp:112 ")[1].split("\n")[0], fmtp)


def test_an_st2110_sdp_with_its_dicom_rtv_metadata_flow() -> None:
    session = parse_session(ANNEX_B.replace("\n", "\r\n"))
    video = session.video
    assert (video.address, video.port, video.payload_type) == ("239.100.9.10", 50000, 112)
    assert video.multicast and video.sources == ("192.168.100.2",) and video.mid == "primary"
    picture = raw_video(video)
    assert (picture.width, picture.height, picture.depth) == (1280, 720, 10)
    assert picture.rate == Fraction(60000, 1001) and round(picture.fps, 2) == 59.94
    assert (picture.pix_fmt, picture.pgroup_bytes, picture.pgroup_pixels) == ("uyvp", 5, 2)
    assert picture.frame_bytes == 1280 * 720 * 5 // 2
    meta = session.metadata
    assert meta is not None and (meta.address, meta.port, meta.payload_type) == (
        "239.100.9.11",
        50010,
        104,
    )
    assert meta.sources == (), "the filter was on the video section only"


@pytest.mark.parametrize(
    ("size", "rate", "depth", "pix_fmt"),
    [
        ("width=1920; height=1080", "25", 8, "uyvy422"),
        ("width=1920; height=1080", "30000/1001", 10, "uyvp"),
        ("width=1920; height=1080", "50", 10, "uyvp"),
        ("width=1920; height=1080", "60", 10, "uyvp"),
        ("width=1280; height=720", "30", 8, "uyvy422"),
    ],
)
def test_sizes_and_rates_hospitals_use(size: str, rate: str, depth: int, pix_fmt: str) -> None:
    fmtp = f"sampling=YCbCr-4:2:2; {size}; exactframerate={rate}; depth={depth}; colorimetry=BT709"
    picture = raw_video(parse_session(_with_fmtp(fmtp)).video)
    assert picture.pix_fmt == pix_fmt and picture.rate == Fraction(rate)


@pytest.mark.parametrize(
    ("fmtp", "reason"),
    [
        ("sampling=YCbCr-4:2:0; width=1280; height=720; exactframerate=50; depth=8",
         "sampling=YCbCr-4:2:0 depth=8 is not supported; supported: YCbCr-4:2:2 8-bit, "
         "YCbCr-4:2:2 10-bit, RGB 8-bit"),
        ("sampling=YCbCr-4:2:2; width=1280; height=720; exactframerate=50; depth=12",
         "depth=12 is not supported"),
        ("sampling=YCbCr-4:2:2; width=1920; height=1080; exactframerate=30000/1001; depth=10; interlace",
         "interlaced and PsF video are not supported"),
        ("sampling=YCbCr-4:2:2; height=720; exactframerate=50; depth=10",
         "lacks the ST 2110-20 parameter width"),
        ("sampling=YCbCr-4:2:2; width=1281; height=720; exactframerate=50; depth=10",
         "width divisible by 2"),
        ("sampling=YCbCr-4:2:2; width=1280; height=720; exactframerate=0; depth=10",
         "out of range"),
    ],
)  # fmt: skip
def test_unsupported_video_is_refused_naming_why(fmtp: str, reason: str) -> None:
    with pytest.raises(SdpError) as refused:
        raw_video(parse_session(_with_fmtp(fmtp)).video)
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("hello", "must start with v=0"),
        ("v=0\ns=x\n", "describes no media"),
        ("v=0\nm=video 5004 RTP/AVP 96\n", "no c= connection address"),
        ("v=0\nc=IN IP4 not-an-ip\nm=video 5004 RTP/AVP 96\n", "is not an IP address"),
        ("v=0\nc=IN IP4 10.0.0.1\nm=video 5004 RTP/SAVP 96\n", "RTP/AVP is"),
        ("v=0\nc=IN IP4 10.0.0.1\nm=video 70000 RTP/AVP 96\n", "out of range"),
        ("v=0\nc=IN IP4 239.1.1.1\na=source-filter: excl IN IP4 239.1.1.1 10.0.0.1\n"
         "m=video 5004 RTP/AVP 96\n", "excl filters are not"),
    ],
)  # fmt: skip
def test_malformed_sdp_is_refused(text: str, reason: str) -> None:
    with pytest.raises(SdpError, match=reason):
        parse_session(text)


def test_a_non_raw_video_flow_is_refused() -> None:
    text = ANNEX_B.replace("raw/90000", "H264/90000")
    with pytest.raises(SdpError, match="only RFC 4175 raw/90000 video is received"):
        raw_video(parse_session(text).video)


def test_each_flow_gets_the_source_filter_of_its_own_destination() -> None:
    text = (
        "v=0\ns=two flows\nt=0 0\n"
        "a=source-filter: incl IN IP4 239.0.0.1 10.0.0.1\n"
        "a=source-filter: incl IN IP4 239.0.0.2 10.0.0.2\n"
        "m=video 5004 RTP/AVP 96\nc=IN IP4 239.0.0.1/32\na=rtpmap:96 raw/90000\n"
        "m=application 5006 RTP/AVP 104\nc=IN IP4 239.0.0.2/32\na=rtpmap:104 dicom/90000\n"
    )
    session = parse_session(text)
    assert session.video.sources == ("10.0.0.1",)
    assert session.metadata is not None and session.metadata.sources == ("10.0.0.2",)
