"""Load a sheet image as a grey page in the template's canvas.

Files are decoded by content, so a JPEG named ``.png`` loads as JPEG.
JPEG goes to libjpeg-turbo through simplejpeg, which fails on damaged
data. Every other format, and the rare JPEG that simplejpeg cannot
decode, goes to ``cv2.imdecode``. Both release the GIL while they
decode, as OpenCV does while it resizes, so many worker threads can load
sheets at once.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import simplejpeg

from omr_desktop.engine.layout import field_layout
from omr_desktop.engine.template import Template

# Reduced decode halves each side, so a bubble keeps half its size in the
# decoded pixels. At 24 px on the canvas it keeps 12, and the default
# sample ellipse (0.7 of the bubble) still covers about 8 x 8 independent
# pixels. Smaller bubbles get the full decode. The rule assumes a scan of
# about the canvas size, because a larger scan only adds pixels.
REDUCED_DECODE_MIN_BUBBLE_PX = 24

# Limits that keep one pathological file from taking the memory of a whole
# reprocess. A 600 dpi A4 scan is 35 megapixels, and uncompressed in
# colour 105 MB.
MAX_FILE_BYTES = 128 * 1024 * 1024
# The package's __init__ sets OpenCV's own limit to the same number.
MAX_PIXELS = 100_000_000

# The libjpeg warnings after which a page is whole. After any other
# warning or error in the scan data the decoder has lost data: OpenCV goes
# on, fills what it could not read, returns a page with wrong marks and
# only prints the warning to stderr. A header that simplejpeg reads is
# complete and supported, so a later error means damage, not a format.
_HARMLESS_JPEG = (
    "Warning: unknown JFIF revision number",
    "Unknown Adobe color transform code",
    "Corrupt JPEG data: bad ICC marker",
)
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class SheetImageError(ValueError):
    """A sheet image that cannot be read; the message gives path and reason."""


def uses_reduced_decode(template: Template) -> bool:
    """Return True when sheets of this template are decoded at half size.

    The rule: every bubble of the template is at least
    `REDUCED_DECODE_MIN_BUBBLE_PX` wide and high on the canvas.
    """
    boxes = field_layout(template).boxes  # cached per template
    return bool(boxes[:, 2:].min() >= REDUCED_DECODE_MIN_BUBBLE_PX)


def decode_sheet_bytes(
    data: bytes | npt.NDArray[np.uint8],
    template: Template,
    source: str = "<bytes>",
    *,
    keep_reduced: bool = False,
) -> npt.NDArray[np.uint8]:
    """Decode image bytes into a grey page of the template's size.

    Returns a uint8 array of shape (page_height, page_width), 0 black and
    255 white. With ``keep_reduced`` and a reduced decode, the shape is
    (page_height // 2, page_width // 2) instead, which saves enlarging the
    page only to sample it. ``source`` names the image in error messages.

    Raises:
        SheetImageError: The bytes are not a decodable image, or the image
            is smaller than half the page in width or height.
    """
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    reduced = uses_reduced_decode(template)
    image = decode_grey(buffer, reduced, source)
    scale = 2 if reduced else 1
    height, width = image.shape[0] * scale, image.shape[1] * scale
    if width * 2 < template.page_width or height * 2 < template.page_height:
        raise SheetImageError(
            f"{source}: image is {width}x{height} px, smaller than half the "
            f"{template.page_width}x{template.page_height} page"
        )
    size = (template.page_width, template.page_height)
    if reduced and keep_reduced:
        size = (template.page_width // 2, template.page_height // 2)
    if image.shape[1] != size[0] or image.shape[0] != size[1]:
        # INTER_AREA averages when shrinking; INTER_LINEAR when enlarging.
        shrink = image.shape[1] > size[0]
        image = np.asarray(
            cv2.resize(
                image,
                size,
                interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
            ),
            dtype=np.uint8,
        )
    return np.ascontiguousarray(image, dtype=np.uint8)


def decode_grey(
    buffer: npt.NDArray[np.uint8], reduced: bool, source: str = "<bytes>"
) -> npt.NDArray[np.uint8]:
    """Decode image bytes to grey as ``cv2.imdecode`` does, but fail on damage.

    ``reduced`` halves each side as ``cv2.IMREAD_REDUCED_GRAYSCALE_2``
    does, rounding up. The pixels equal OpenCV's, EXIF orientation
    included: both decode JPEG with libjpeg-turbo's accurate integer IDCT
    and take the luminance of a colour JPEG.

    Raises:
        SheetImageError: The bytes are not a decodable image, their JPEG
            data is damaged, or the image has more than `MAX_PIXELS`.
    """
    _check_file_size(buffer.size, source)
    head = buffer[:24].tobytes()
    if head.startswith(_PNG_MAGIC) and len(head) == 24:
        width, height = struct.unpack(">II", head[16:24])
        _check_pixels(width, height, source)
    image = (
        _decode_jpeg(buffer, reduced, source) if head.startswith(_JPEG_MAGIC) else None
    )
    if image is not None:
        return image
    flags = cv2.IMREAD_REDUCED_GRAYSCALE_2 if reduced else cv2.IMREAD_GRAYSCALE
    try:
        decoded = cv2.imdecode(buffer, flags) if buffer.size else None
    except cv2.error as exc:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc.err):
            raise SheetImageError(
                f"{source}: image has more than the {MAX_PIXELS // 1_000_000} "
                "megapixels a sheet image may have; scan at a lower resolution"
            ) from exc
        # OpenCV raises instead of returning None for some corrupt files.
        raise SheetImageError(
            f"{source}: not a readable image (corrupt, or larger than OpenCV "
            f"decodes: {exc.err})"
        ) from exc
    if decoded is None:
        raise SheetImageError(
            f"{source}: not a readable image (corrupt or unknown format)"
        )
    return np.asarray(decoded, dtype=np.uint8)


def _check_file_size(size: int, source: str) -> None:
    if size > MAX_FILE_BYTES:
        raise SheetImageError(
            f"{source}: file is {size / 2**20:,.0f} MB, more than the "
            f"{MAX_FILE_BYTES // 2**20} MB a sheet image may have; scan at a "
            "lower resolution or compress the image"
        )


def _check_pixels(width: int, height: int, source: str) -> None:
    if width * height > MAX_PIXELS:
        raise SheetImageError(
            f"{source}: image is {width}x{height} px, more than the "
            f"{MAX_PIXELS // 1_000_000} megapixels a sheet image may have; "
            "scan at a lower resolution"
        )


def _decode_jpeg(
    buffer: npt.NDArray[np.uint8], reduced: bool, source: str
) -> npt.NDArray[np.uint8] | None:
    """Decode a JPEG to grey with simplejpeg; None leaves it to OpenCV.

    simplejpeg stops at libjpeg's first warning. A header it cannot read,
    a colour space other than grey, YCbCr, RGB, CMYK and YCCK, and a
    warning that loses no data send the file to OpenCV, which decodes such
    files as before. Any other error fails the sheet.
    """
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(buffer)
    except ValueError:
        return None
    _check_pixels(width, height, source)
    if colorspace in ("Gray", "YCbCr", "RGB"):
        output = "GRAY"
    elif colorspace in ("CMYK", "YCCK"):
        # libjpeg-turbo turns these into CMYK only, never into grey.
        output = "CMYK"
    else:
        return None
    scale = 2 if reduced else 1
    try:
        image = simplejpeg.decode_jpeg(
            buffer,
            colorspace=output,
            # The smallest scale that keeps these sizes is 1/scale exactly,
            # the size libjpeg gives OpenCV's reduced decode.
            min_height=-(-height // scale),
            min_width=-(-width // scale),
            strict=True,
        )
    except ValueError as exc:
        message = str(exc)
        if message.startswith(_HARMLESS_JPEG):
            return None
        raise SheetImageError(
            f"{source}: damaged JPEG data ({message}); scan the sheet "
            "again or restore the file from a copy"
        ) from exc
    grey = image[:, :, 0] if output == "GRAY" else _grey_from_cmyk(image)
    return _orient(grey, _exif_orientation(buffer))


def _grey_from_cmyk(cmyk: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Convert decoded CMYK pixels to grey with OpenCV's integer arithmetic.

    JPEG files in CMYK, as Adobe software writes them, store each ink
    inverted (255 is no ink). So a colour channel is the stored ink value
    scaled by the stored black value: ``k - ((255 - ink) * k >> 8)``. Grey
    is then the BT.601 weighted sum of red, green and blue in 14-bit fixed
    point, rounded. OpenCV 4 decodes such files to the same grey, bit for
    bit (tested on YCCK files at full and half size).
    """
    grey = np.empty(cmyk.shape[:2], dtype=np.uint8)
    # Stripes of rows keep the wider temporaries small: a whole 100
    # megapixel page at once needed about 1.7 GB more.
    for top in range(0, cmyk.shape[0], _CMYK_STRIPE_ROWS):
        stripe = cmyk[top : top + _CMYK_STRIPE_ROWS]
        black = stripe[:, :, 3].astype(np.uint32)
        luma = np.full(black.shape, 1 << 13, dtype=np.uint32)
        # Cyan gives red, magenta green and yellow blue.
        for channel, weight in ((0, 4899), (1, 9617), (2, 1868)):
            ink = 255 - stripe[:, :, channel].astype(np.uint32)
            luma += (black - ((ink * black) >> 8)) * weight
        grey[top : top + _CMYK_STRIPE_ROWS] = luma >> 14
    return grey


# Rows of a CMYK page converted at a time: about 2 MB of temporaries for a
# 1700-pixel-wide page.
_CMYK_STRIPE_ROWS = 64


def _exif_orientation(buffer: npt.NDArray[np.uint8]) -> int:
    """Return the EXIF orientation (1-8) of a JPEG, 1 when it has none."""
    data = buffer[: min(buffer.size, 1 << 17)].tobytes()
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            return _tiff_orientation(body[6:])
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """Return the orientation tag of a TIFF header's first directory, or 1."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    (directory,) = struct.unpack(order + "I", tiff[4:8])
    if directory + 2 > len(tiff):
        return 1
    (entries,) = struct.unpack(order + "H", tiff[directory : directory + 2])
    for start in range(directory + 2, directory + 2 + 12 * entries, 12):
        if start + 12 > len(tiff):
            break
        tag, kind = struct.unpack(order + "HH", tiff[start : start + 4])
        if tag == 0x0112 and kind == 3:  # Orientation, a SHORT
            (value,) = struct.unpack(order + "H", tiff[start + 8 : start + 10])
            return value if 1 <= value <= 8 else 1
    return 1


def _orient(image: npt.NDArray[np.uint8], orientation: int) -> npt.NDArray[np.uint8]:
    """Turn a decoded page upright by its EXIF orientation, as OpenCV does."""
    if orientation >= 5:  # 5-8 swap rows and columns first
        image = image.T
    if orientation in (2, 6):
        image = image[:, ::-1]
    elif orientation in (3, 7):
        image = image[::-1, ::-1]
    elif orientation in (4, 8):
        image = image[::-1]
    return np.ascontiguousarray(image)


def shrink_by(image: npt.NDArray[np.uint8], scale: int) -> npt.NDArray[np.uint8]:
    """Return every ``scale``-th pixel of every ``scale``-th row of the page.

    Plain subsampling, not averaging: its callers average over whole boxes
    or close over many pixels anyway, and it costs about 0.1 ms on a
    1700 x 2400 page where OpenCV's area resize takes about 1.7 ms.
    """
    if scale <= 1:
        return image
    return np.ascontiguousarray(image[::scale, ::scale])


def load_sheet_image(path: Path, template: Template) -> npt.NDArray[np.uint8]:
    """Load a sheet image file as a grey page of the template's size.

    Returns a uint8 array of shape (page_height, page_width). The image is
    resized to the page whatever its aspect ratio, as OMRChecker does.
    Safe to call from several threads at once.

    Raises:
        SheetImageError: The file is missing, unreadable or corrupt, or
            smaller than half the page size in either dimension.
    """
    path = Path(path)
    return decode_sheet_bytes(_read_bytes(path), template, source=str(path))


def load_sheet_for_measuring(path: Path, template: Template) -> npt.NDArray[np.uint8]:
    """Load a sheet at the resolution it was decoded at, for `measure_fills`.

    Like `load_sheet_image`, but after a reduced decode the page stays at
    half size: (page_height // 2, page_width // 2). Enlarging a 1700 x 2400
    page costs about 2 ms and adds no information.

    Raises:
        SheetImageError: As `load_sheet_image`.
    """
    return decode_sheet_bytes(
        _read_bytes(Path(path)), template, source=str(path), keep_reduced=True
    )


def _read_bytes(path: Path) -> npt.NDArray[np.uint8]:
    try:
        # A file over the size limit is rejected before it is read.
        _check_file_size(path.stat().st_size, str(path))
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SheetImageError(f"{path}: failed to read file ({reason})") from exc
    if data.size == 0:
        raise SheetImageError(f"{path}: file is empty")
    return data
