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


def damaged_jpeg(data: bytes) -> bytes:
    """Return a JPEG with 4 kB of its scan data zeroed halfway through.

    OpenCV decodes such a file without an error: libjpeg prints "Corrupt
    JPEG data: premature end of data segment" to stderr and fills the
    rest of the page as best it can.
    """
    middle = len(data) // 2
    return data[:middle] + bytes(4096) + data[middle + 4096 :]


def jpeg_claiming_size(data: bytes, width: int, height: int) -> bytes:
    """Return a baseline JPEG whose frame header claims another size."""
    start = data.index(b"\xff\xc0")
    # Marker (2 bytes), length (2), precision (1), then height and width.
    size = struct.pack(">HH", height, width)
    return data[: start + 5] + size + data[start + 9 :]


def jpeg_with_orientation(data: bytes, orientation: int, byte_order: str) -> bytes:
    """Return a JPEG with an EXIF block whose orientation tag is ``orientation``.

    ``byte_order`` is "II" (little-endian) or "MM" (big-endian). The block
    goes right after the start-of-image marker, as cameras write it.
    """
    order = "<" if byte_order == "II" else ">"
    entry = struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0)
    directory = struct.pack(order + "H", 1) + entry + struct.pack(order + "I", 0)
    tiff = byte_order.encode() + struct.pack(order + "HI", 42, 8) + directory
    body = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    return data[:2] + segment + data[2:]


def tiff_claiming_size(width: int, height: int) -> bytes:
    """Return a grey, uncompressed TIFF whose header claims ``width`` x ``height``.

    Its only strip contains one byte, so a decoder that checks the size
    before it allocates the page rejects the file at once.
    """
    # Tag, type (3 SHORT, 4 LONG), count, value.
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # PhotometricInterpretation: black is zero
        (273, 4, 1, 8),  # StripOffsets: the byte after the header
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 1),  # StripByteCounts
    ]
    directory = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = (
            struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        )
        directory += struct.pack("<HHI", tag, kind, count) + packed
    directory += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 12) + b"\x00" * 4 + directory
