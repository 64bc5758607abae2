"""Image files that decoders reject in unusual ways, for failure tests."""

from __future__ import annotations

import struct
import zlib


def png_claiming_size(width: int, height: int) -> bytes:
    """Return a grey PNG whose header claims ``width`` x ``height`` pixels.

    Its image data is a single byte. OpenCV raises cv2.error for such a file
    above 2**30 pixels (CV_IO_MAX_IMAGE_PIXELS) instead of returning None.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )
