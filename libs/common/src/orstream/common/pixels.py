"""Raw pixel formats a ring slot may hold, named as FFmpeg names them where FFmpeg has a name.

Ingest stores frames as the source delivers them (an RFC 4175 flow lands in the ring byte for
byte as it came off the wire); the encoder converts to what its codec needs. So the ring, the
``.frame`` notification and the registry all speak these names:

===========  ==============================================  ===============
name         layout                                          bytes / frame
===========  ==============================================  ===============
yuv420p      I420: Y plane, then U and V at half size          w*h*3/2
nv12         Y plane, then interleaved UV at half size         w*h*3/2
uyvy422      packed 4:2:2 8-bit Cb Y0 Cr Y1 (RFC 4175 8-bit)   w*h*2
yuyv422      packed 4:2:2 8-bit Y0 Cb Y1 Cr                    w*h*2
uyvp         packed 4:2:2 10-bit pgroups, 5 bytes per 2 px,    w*h*5/2
             big-endian bit order (RFC 4175 10-bit; GStreamer
             calls it UYVP; FFmpeg decodes it as ``bitpacked``)
rgb24        packed R G B 8-bit                                w*h*3
gray         8-bit luma only                                   w*h
===========  ==============================================  ===============
"""

from __future__ import annotations

from dataclasses import dataclass


class PixelFormatError(ValueError):
    """A pixel format this project does not carry, or a size it cannot hold."""


@dataclass(frozen=True, slots=True)
class PixelFormat:
    name: str
    #: Bytes per group of ``group_pixels`` horizontally adjacent pixels (per line, all planes).
    group_bytes: int
    group_pixels: int
    #: Chroma subsampled vertically (4:2:0): rows of chroma per two rows of luma.
    vertical_420: bool = False
    bit_depth: int = 8

    def frame_bytes(self, width: int, height: int) -> int:
        self.check_size(width, height)
        line = width // self.group_pixels * self.group_bytes
        if self.vertical_420:
            return width * height * 3 // 2
        return line * height

    def check_size(self, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise PixelFormatError(f"{width}x{height} is not a picture size")
        if width % self.group_pixels or (self.vertical_420 and (width % 2 or height % 2)):
            raise PixelFormatError(
                f"{self.name} needs a width divisible by {max(self.group_pixels, 2)}"
                f"{' and an even height' if self.vertical_420 else ''}; got {width}x{height}"
            )


FORMATS: dict[str, PixelFormat] = {
    f.name: f
    for f in (
        PixelFormat("yuv420p", 3, 2, vertical_420=True),
        PixelFormat("nv12", 3, 2, vertical_420=True),
        PixelFormat("uyvy422", 4, 2),
        PixelFormat("yuyv422", 4, 2),
        PixelFormat("uyvp", 5, 2, bit_depth=10),
        PixelFormat("rgb24", 3, 1),
        PixelFormat("gray", 1, 1),
    )
}


def pixel_format(name: str) -> PixelFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise PixelFormatError(
            f"pixel format {name!r} is not carried; supported: {', '.join(FORMATS)}"
        ) from None


def frame_bytes(name: str, width: int, height: int) -> int:
    return pixel_format(name).frame_bytes(width, height)
