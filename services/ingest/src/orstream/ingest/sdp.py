"""Session descriptions of SMPTE ST 2110 / DICOM-RTV senders: which flows to receive, and how.

A sender publishes one SDP file per source: an ``m=video`` line for the RFC 4175 raw video flow
(``a=rtpmap:<pt> raw/90000`` with the ST 2110-20 ``a=fmtp`` parameters) and, for DICOM-RTV, an
``m=application`` line for the metadata flow beside it. Each media section may carry its own
``c=`` (unicast or multicast destination) and ``a=source-filter: incl`` (only these senders).
Only what this project receives is modelled; anything it cannot receive is refused at start with
a message naming what is supported.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from fractions import Fraction

from orstream.common.pixels import pixel_format


class SdpError(ValueError):
    """The SDP is malformed, or describes a flow this ingest cannot receive."""


#: ST 2110-20 ``sampling`` + ``depth`` → the ring's pixel format (RFC 4175 pgroups as they come).
RAW_FORMATS: dict[tuple[str, int], str] = {
    ("YCbCr-4:2:2", 8): "uyvy422",
    ("YCbCr-4:2:2", 10): "uyvp",
    ("RGB", 8): "rgb24",
}
SUPPORTED_RAW = ", ".join(f"{s} {d}-bit" for s, d in RAW_FORMATS)
#: Encoding name of the DICOM-RTV metadata flow (PS3.22 6.2: ``a=rtpmap:<pt> dicom/90000``).
METADATA_ENCODINGS = frozenset({"dicom"})


@dataclass(frozen=True, slots=True)
class RtpFlow:
    """One media section: where its RTP arrives and what it carries."""

    media: str
    address: str
    port: int
    payload_type: int
    encoding: str
    clock_rate: int
    fmtp: dict[str, str] = field(default_factory=dict)
    #: ``a=source-filter: incl``: only datagrams from these addresses are taken.
    sources: tuple[str, ...] = ()
    mid: str | None = None

    @property
    def multicast(self) -> bool:
        return ipaddress.ip_address(self.address).is_multicast


@dataclass(frozen=True, slots=True)
class RawVideo:
    """The picture an RFC 4175 flow carries (ST 2110-20 ``a=fmtp``)."""

    width: int
    height: int
    rate: Fraction
    sampling: str
    depth: int
    pix_fmt: str
    colorimetry: str
    #: Bytes per pixel group and pixels per group (RFC 4175 section 4.3).
    pgroup_bytes: int
    pgroup_pixels: int

    @property
    def fps(self) -> float:
        return float(self.rate)

    @property
    def line_bytes(self) -> int:
        return self.width // self.pgroup_pixels * self.pgroup_bytes

    @property
    def frame_bytes(self) -> int:
        return self.line_bytes * self.height


@dataclass(frozen=True, slots=True)
class Session:
    name: str
    flows: tuple[RtpFlow, ...]

    @property
    def video(self) -> RtpFlow:
        for flow in self.flows:
            if flow.media == "video":
                return flow
        raise SdpError("the SDP has no m=video section")

    @property
    def metadata(self) -> RtpFlow | None:
        for flow in self.flows:
            if flow.media == "application" and flow.encoding.lower() in METADATA_ENCODINGS:
                return flow
        return None


def parse_session(text: str) -> Session:
    """Parse an SDP (RFC 8866) into its RTP flows; session-level ``c=``/filters are inherited."""
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or not lines[0].startswith("v="):
        raise SdpError("not an SDP: it must start with v=0")
    name = ""
    session_addr: str | None = None
    session_filters: list[tuple[str, tuple[str, ...]]] = []
    sections: list[dict[str, object]] = []
    current: dict[str, object] | None = None
    for line in lines:
        kind, sep, value = line.partition("=")
        if not sep or len(kind) != 1:
            raise SdpError(f"malformed SDP line {line!r}")
        if kind == "s":
            name = value
        elif kind == "m":
            current = {"m": value, "rtpmap": {}, "fmtp": {}, "a": []}
            sections.append(current)
        elif kind == "c":
            addr = _connection_address(value)
            if current is None:
                session_addr = addr
            else:
                current["c"] = addr
        elif kind == "a":
            attr, _, arg = value.partition(":")
            if attr == "source-filter":
                target = session_filters if current is None else current.setdefault("filters", [])
                target.append(_source_filter(arg))  # type: ignore[attr-defined]
            elif current is not None:
                if attr == "rtpmap":
                    pt, _, enc = arg.partition(" ")
                    current["rtpmap"][pt] = enc  # type: ignore[index]
                elif attr == "fmtp":
                    pt, _, params = arg.partition(" ")
                    current["fmtp"][pt] = params  # type: ignore[index]
                elif attr == "mid":
                    current["mid"] = arg
    flows = tuple(_flow(section, session_addr, session_filters) for section in sections)
    if not flows:
        raise SdpError("the SDP describes no media (no m= line)")
    return Session(name=name, flows=flows)


def _connection_address(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"unsupported connection line c={value}")
    address = parts[2].split("/")[0]  # multicast TTL / count suffixes
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise SdpError(f"c= address {address!r} is not an IP address") from None
    return address


def _source_filter(arg: str) -> tuple[str, tuple[str, ...]]:
    """``a=source-filter: incl IN IP4 <dest> <src1> [<src2> ...]`` (RFC 4570) → dest, sources."""
    parts = arg.split()
    if len(parts) < 5 or parts[1] != "IN":
        raise SdpError(f"malformed a=source-filter:{arg}")
    if parts[0] != "incl":
        raise SdpError("only a=source-filter: incl is supported (excl filters are not)")
    return parts[3], tuple(parts[4:])


def _sources_for(address: str, filters: list[tuple[str, tuple[str, ...]]]) -> tuple[str, ...]:
    """The senders the filters allow for destination ``address`` (``*`` matches any)."""
    out: list[str] = []
    for dest, sources in filters:
        if dest in (address, "*"):
            out += [s for s in sources if s not in out]
    return tuple(out)


def _flow(
    section: dict[str, object],
    session_addr: str | None,
    session_filters: list[tuple[str, tuple[str, ...]]],
) -> RtpFlow:
    m = str(section["m"]).split()
    if len(m) < 4:
        raise SdpError(f"malformed m={section['m']}")
    media, port_s, proto, fmt = m[0], m[1], m[2], m[3]
    if proto not in ("RTP/AVP", "RTP/AVPF"):
        raise SdpError(f"m={media}: transport {proto} is not supported (RTP/AVP is)")
    try:
        port = int(port_s.split("/")[0])
        payload_type = int(fmt)
    except ValueError:
        raise SdpError(f"malformed m={section['m']}") from None
    if not 0 < port < 65536 or not 0 <= payload_type < 128:
        raise SdpError(f"m={media}: port {port} or payload type {payload_type} out of range")
    address = section.get("c", session_addr)
    if address is None:
        raise SdpError(f"m={media}: no c= connection address")
    rtpmap: dict[str, str] = section["rtpmap"]  # type: ignore[assignment]
    enc = rtpmap.get(fmt, "")
    encoding, _, clock = enc.partition("/")
    try:
        clock_rate = int(clock.split("/")[0]) if clock else 0
    except ValueError:
        raise SdpError(f"m={media}: malformed a=rtpmap:{fmt} {enc}") from None
    fmtps: dict[str, str] = section["fmtp"]  # type: ignore[assignment]
    return RtpFlow(
        media=media,
        address=str(address),
        port=port,
        payload_type=payload_type,
        encoding=encoding,
        clock_rate=clock_rate,
        fmtp=_fmtp_params(fmtps.get(fmt, "")),
        sources=_sources_for(
            str(address),
            section.get("filters") or session_filters,  # type: ignore[arg-type]
        ),
        mid=section.get("mid"),  # type: ignore[arg-type]
    )


def _fmtp_params(params: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in params.split(";"):
        key, sep, value = item.strip().partition("=")
        if key:
            out[key.strip()] = value.strip() if sep else ""
    return out


def raw_video(flow: RtpFlow) -> RawVideo:
    """The ST 2110-20 picture of an RFC 4175 flow, or :class:`SdpError` naming what is supported."""
    if flow.encoding.lower() != "raw" or flow.clock_rate != 90000:
        raise SdpError(
            f"m=video payload {flow.payload_type} is {flow.encoding or '?'}/{flow.clock_rate}; "
            "only RFC 4175 raw/90000 video is received"
        )
    p = flow.fmtp
    try:
        width, height = int(p["width"]), int(p["height"])
        sampling = p["sampling"]
        depth = int(p["depth"])
        rate_s = p.get("exactframerate") or p["framerate"]
    except KeyError as exc:
        raise SdpError(f"a=fmtp lacks the ST 2110-20 parameter {exc.args[0]}") from None
    except ValueError as exc:
        raise SdpError(f"a=fmtp has a malformed number: {exc}") from None
    if "interlace" in p or "segmented" in p:
        raise SdpError("interlaced and PsF video are not supported; progressive only")
    try:
        rate = Fraction(rate_s)
    except (ValueError, ZeroDivisionError):
        raise SdpError(f"exactframerate={rate_s} is not a frame rate") from None
    if not 1 <= rate <= 240:
        raise SdpError(f"exactframerate={rate_s} is out of range")
    pix_fmt = RAW_FORMATS.get((sampling, depth))
    if pix_fmt is None:
        raise SdpError(
            f"sampling={sampling} depth={depth} is not supported; supported: {SUPPORTED_RAW}"
        )
    if not (16 <= width <= 7680 and 16 <= height <= 4320) or height % 2:
        raise SdpError(f"{width}x{height} is not a supported picture size (even height, <= 8K)")
    fmt = pixel_format(pix_fmt)
    try:
        fmt.check_size(width, height)
    except ValueError as exc:
        raise SdpError(str(exc)) from None
    return RawVideo(
        width=width,
        height=height,
        rate=rate,
        sampling=sampling,
        depth=depth,
        pix_fmt=pix_fmt,
        colorimetry=p.get("colorimetry", "BT709"),
        pgroup_bytes=fmt.group_bytes,
        pgroup_pixels=fmt.group_pixels,
    )
