"""Load a sheet image as a grey page in the template's canvas.

Files are decoded by content with ``cv2.imdecode`` over the file's bytes,
so a JPEG named ``.png`` loads as JPEG. OpenCV releases the GIL while it
decodes and resizes, so many worker threads can load sheets at once.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from omr_desktop.engine.layout import field_layout
from omr_desktop.engine.template import Template

# Reduced decode halves each side, so a bubble keeps half its size in the
# decoded pixels. At 24 px on the canvas it keeps 12, and the default
# sample ellipse (0.7 of the bubble) still covers about 8 x 8 independent
# pixels. Smaller bubbles get the full decode. The rule assumes a scan of
# about the canvas size, because a larger scan only adds pixels.
REDUCED_DECODE_MIN_BUBBLE_PX = 24


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
    flags = cv2.IMREAD_REDUCED_GRAYSCALE_2 if reduced else cv2.IMREAD_GRAYSCALE
    try:
        image = cv2.imdecode(buffer, flags) if buffer.size else None
    except cv2.error as exc:
        # OpenCV raises instead of returning None for some corrupt files,
        # such as a PNG header claiming more pixels than it will decode.
        raise SheetImageError(
            f"{source}: not a readable image (corrupt, or larger than OpenCV "
            f"decodes: {exc.err})"
        ) from exc
    if image is None:
        raise SheetImageError(
            f"{source}: not a readable image (corrupt or unknown format)"
        )
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
        image = cv2.resize(
            image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    return np.ascontiguousarray(image, dtype=np.uint8)


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
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SheetImageError(f"{path}: failed to read file ({reason})") from exc
    if data.size == 0:
        raise SheetImageError(f"{path}: file is empty")
    return data
