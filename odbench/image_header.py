"""An image's format and pixel size read from its header (JPEG SOF marker, PNG IHDR chunk), without decoding.

Decoding allocates width × height × 3 bytes whatever the file's size (a 389 KB PNG can claim 20000 ×
20000 pixels: 1.2 GB), so the size is read first and checked against `Limits.max_image_pixels` and
the annotation's width and height before any decoder sees the bytes. Only JPEG and PNG are accepted:
for other formats the size could not be checked first. A JPEG's EXIF orientation is read too, since
OpenCV applies it when decoding (orientations 5–8 swap width and height).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# start-of-frame markers: every JPEG coding process (baseline, progressive, lossless, arithmetic)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length field (TEM, RSTn)
_SOS, _APP1 = 0xDA, 0xE1


class ImageHeaderError(ValueError):
    """Bytes whose header gives no pixel size: empty, truncated, or not a JPEG or PNG."""


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: format, stored width and height, and EXIF orientation (1 = as stored)."""

    format: str  # "jpeg" or "png"
    width: int
    height: int
    orientation: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """(width, height) as stored and, where the orientation transposes it, as displayed."""
        stored = (self.width, self.height)
        return (stored, (self.height, self.width)) if self.orientation in (5, 6, 7, 8) else (stored,)


def read_header(data: bytes) -> ImageHeader:
    """The header of a JPEG or PNG file's bytes; ImageHeaderError says why there is none."""
    if not data:
        raise ImageHeaderError("the file is empty (0 bytes)")
    if data.startswith(PNG_SIGNATURE):
        return _png(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg(data)
    raise ImageHeaderError(f"not a JPEG or PNG file (it starts with {data[:8]!r}): only JPEG and PNG are accepted")


def _png(data: bytes) -> ImageHeader:
    """PNG: the first chunk must be IHDR, whose first 8 bytes are width and height (big-endian)."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageHeaderError("a PNG file without an IHDR chunk (truncated?)")
    width, height = struct.unpack(">II", data[16:24])
    return _checked(ImageHeader("png", width, height))


def _jpeg(data: bytes) -> ImageHeader:
    """JPEG: walk the marker segments up to the first start-of-frame, noting EXIF orientation on the way."""
    pos, orientation = 2, 1
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageHeaderError(f"a JPEG file with a broken marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        segment = data[pos + 4:pos + 2 + length]
        if marker in _SOF:
            if len(segment) < 5:
                break
            height, width = struct.unpack(">HH", segment[1:5])
            return _checked(ImageHeader("jpeg", width, height, orientation))
        if marker == _SOS:
            raise ImageHeaderError("a JPEG file whose scan starts before any frame header (SOF)")
        if marker == _APP1 and segment.startswith(b"Exif\x00\x00"):
            orientation = _exif_orientation(segment[6:]) or orientation
        pos += 2 + length
    raise ImageHeaderError("a JPEG file without a frame header (SOF): truncated or not a JPEG")


def _exif_orientation(tiff: bytes) -> int | None:
    """The Orientation tag (0x0112) of IFD0 in an EXIF TIFF block, or None."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    order = "<" if tiff[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return None
    count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind = struct.unpack(order + "HH", tiff[entry:entry + 4])
        if tag == 0x0112 and kind == 3:
            value = struct.unpack(order + "H", tiff[entry + 8:entry + 10])[0]
            return value if 1 <= value <= 8 else None
    return None


def _checked(header: ImageHeader) -> ImageHeader:
    """A header with a zero side (a JPEG's DNL-defined height, a broken PNG) gives no usable size."""
    if header.width < 1 or header.height < 1:
        raise ImageHeaderError(f"a {header.format.upper()} header with size {header.width}x{header.height}")
    return header
