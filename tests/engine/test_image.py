"""Sheet image loading: decode by content, resize, reject bad files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg

from omr_desktop.engine import image as image_module
from omr_desktop.engine.image import (
    SheetImageError,
    decode_grey,
    load_sheet_image,
    uses_reduced_decode,
)
from omr_desktop.engine.synthetic import random_truth, render_sheet
from omr_desktop.engine.template import Template, load_template
from tests.corrupt_images import (
    damaged_jpeg,
    jpeg_claiming_size,
    jpeg_with_orientation,
    png_claiming_size,
    tiff_claiming_size,
)

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def test_jpeg_named_png_loads_by_content() -> None:
    path = SAMPLES / "Sandeep-1507" / "omr-2.png"
    assert path.read_bytes()[:2] == b"\xff\xd8"  # JPEG magic under a .png name
    template = load_template(SAMPLES / "Sandeep-1507" / "template.json")
    image = load_sheet_image(path, template)
    assert image.shape == (1682, 1189)
    assert image.dtype == np.uint8


def test_other_aspect_ratio_is_resized_to_page() -> None:
    template = load_template(SAMPLES / "Shamanth" / "template.json")
    image = load_sheet_image(SAMPLES / "Shamanth" / "omr_sheet_01.png", template)
    assert image.shape == (400, 300)


@pytest.mark.parametrize("fmt", ["jpg", "png", "tiff"])
def test_synthetic_formats_load(
    fmt: str, demo: Template, rng: np.random.Generator, tmp_path: Path
) -> None:
    truth = random_truth(demo, rng, "clean")
    path = tmp_path / f"sheet.{fmt}"
    path.write_bytes(render_sheet(demo, truth, rng, fmt=fmt))
    image = load_sheet_image(path, demo)
    assert image.shape == (2400, 1700)


def test_reduced_decode_rule(demo: Template) -> None:
    assert uses_reduced_decode(demo)  # 28 px bubbles
    small = load_template(SAMPLES / "Sandeep-1507" / "template.json")
    assert not uses_reduced_decode(small)  # 15 px bubbles


def test_missing_file_names_path(demo: Template, tmp_path: Path) -> None:
    path = tmp_path / "absent.jpg"
    with pytest.raises(SheetImageError, match="absent.jpg"):
        load_sheet_image(path, demo)


def test_corrupt_file_is_rejected(demo: Template, tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(SheetImageError, match="not a readable image"):
        load_sheet_image(path, demo)


def test_oversized_png_header_is_rejected(demo: Template, tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming_size(40_000, 40_000))
    with pytest.raises(
        SheetImageError,
        match="huge.png: image is 40000x40000 px, more than the 100 megapixels",
    ):
        load_sheet_image(path, demo)


def test_oversized_tiff_header_is_rejected(demo: Template, tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    path.write_bytes(tiff_claiming_size(20_000, 20_000))
    with pytest.raises(
        SheetImageError, match="huge.tif: image has more than the 100 megapixels"
    ):
        load_sheet_image(path, demo)


def test_oversized_jpeg_header_is_rejected(demo: Template, tmp_path: Path) -> None:
    ok, encoded = cv2.imencode(".jpg", np.full((64, 48), 200, np.uint8))
    assert ok
    path = tmp_path / "huge.jpg"
    path.write_bytes(jpeg_claiming_size(encoded.tobytes(), 20_000, 20_000))
    with pytest.raises(SheetImageError, match="huge.jpg: image is 20000x20000 px"):
        load_sheet_image(path, demo)


def test_oversized_file_not_read(
    demo: Template,
    rng: np.random.Generator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "sheet.jpg"
    path.write_bytes(render_sheet(demo, random_truth(demo, rng, "clean"), rng))
    monkeypatch.setattr(image_module, "MAX_FILE_BYTES", path.stat().st_size - 1)
    read = []
    monkeypatch.setattr(np, "fromfile", lambda *a, **k: read.append(a))
    with pytest.raises(SheetImageError, match="sheet.jpg: file is 0 MB, more than"):
        load_sheet_image(path, demo)
    assert not read


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _marker_in_scan(data: bytes) -> bytes:
    # A marker that libjpeg does not know, where the scan data should go on.
    middle = len(data) // 2
    return data[:middle] + b"\xff\x04" + data[middle + 2 :]


@pytest.mark.parametrize(
    ("damage", "reason", "opencv_reads"),
    [
        (damaged_jpeg, "Corrupt JPEG data: premature end of data segment", True),
        (_marker_in_scan, "Unsupported marker type 0x04", True),
        (_half, "Premature end of JPEG file", False),
    ],
)
def test_damaged_jpeg_is_rejected(
    damage: Callable[[bytes], bytes],
    reason: str,
    opencv_reads: bool,
    demo: Template,
    rng: np.random.Generator,
    tmp_path: Path,
) -> None:
    broken = damage(render_sheet(demo, random_truth(demo, rng, "clean"), rng))
    opencv = cv2.imdecode(np.frombuffer(broken, np.uint8), cv2.IMREAD_GRAYSCALE)
    # Where OpenCV hands back a whole page, its marks are wrong.
    assert (opencv is not None) == opencv_reads
    path = tmp_path / "damaged.jpg"
    path.write_bytes(broken)
    with pytest.raises(
        SheetImageError, match=f"damaged.jpg: damaged JPEG data \\({reason}\\)"
    ):
        load_sheet_image(path, demo)


def test_harmless_jpeg_warning_goes_to_opencv(
    demo: Template, rng: np.random.Generator
) -> None:
    data = render_sheet(demo, random_truth(demo, rng, "clean"), rng)
    # JFIF 2.01 does not exist: libjpeg warns and decodes the page whole.
    start = data.index(b"JFIF\x00") + 5
    newer = np.frombuffer(data[:start] + b"\x02" + data[start + 1 :], np.uint8)
    expected = cv2.imdecode(newer, cv2.IMREAD_REDUCED_GRAYSCALE_2)
    np.testing.assert_array_equal(decode_grey(newer, reduced=True), expected)


def _sample_jpegs() -> list[Path]:
    files = sorted(p for p in SAMPLES.rglob("*") if p.is_file())
    return [p for p in files if p.read_bytes()[:3] == b"\xff\xd8\xff"]


@pytest.mark.parametrize("reduced", [False, True])
def test_jpeg_pixels_equal_opencv(
    reduced: bool, demo: Template, rng: np.random.Generator
) -> None:
    flags = cv2.IMREAD_REDUCED_GRAYSCALE_2 if reduced else cv2.IMREAD_GRAYSCALE
    pages = [np.fromfile(p, np.uint8) for p in _sample_jpegs()]
    assert len(pages) >= 7
    rendered = render_sheet(demo, random_truth(demo, rng, "clean"), rng)
    colour = cv2.imencode(
        ".jpg",
        cv2.cvtColor(
            cv2.imdecode(np.frombuffer(rendered, np.uint8), cv2.IMREAD_GRAYSCALE),
            cv2.COLOR_GRAY2BGR,
        )
        + np.array([0, 9, 30], np.uint8),
    )[1]
    pages += [np.frombuffer(rendered, np.uint8), colour]
    for page in pages:
        np.testing.assert_array_equal(
            decode_grey(page, reduced), cv2.imdecode(page, flags)
        )


def _cmyk_sheet(demo: Template, rng: np.random.Generator) -> bytes:
    """Return a demo page as a YCCK JPEG with inverted inks, as Adobe writes it."""
    rendered = render_sheet(demo, random_truth(demo, rng, "clean"), rng)
    grey = cv2.imdecode(np.frombuffer(rendered, np.uint8), cv2.IMREAD_GRAYSCALE)
    inks = np.empty((*grey.shape, 4), np.uint8)
    # Paper tinted by a little cyan and yellow; the marks in black ink.
    inks[:, :, 0] = 240
    inks[:, :, 1] = 255
    inks[:, :, 2] = 225
    inks[:, :, 3] = grey
    return bytes(simplejpeg.encode_jpeg(inks, quality=90, colorspace="CMYK"))


@pytest.mark.parametrize("reduced", [False, True])
def test_cmyk_jpeg_pixels_equal_opencv(
    reduced: bool, demo: Template, rng: np.random.Generator
) -> None:
    data = _cmyk_sheet(demo, rng)
    assert simplejpeg.decode_jpeg_header(data)[2] == "YCCK"
    page = np.frombuffer(data, np.uint8)
    flags = cv2.IMREAD_REDUCED_GRAYSCALE_2 if reduced else cv2.IMREAD_GRAYSCALE

    np.testing.assert_array_equal(decode_grey(page, reduced), cv2.imdecode(page, flags))


def test_damaged_cmyk_jpeg_is_rejected(
    demo: Template, rng: np.random.Generator, tmp_path: Path
) -> None:
    broken = damaged_jpeg(_cmyk_sheet(demo, rng))
    # OpenCV hands back a whole page, with wrong marks.
    opencv = cv2.imdecode(np.frombuffer(broken, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert opencv is not None
    path = tmp_path / "damaged-cmyk.jpg"
    path.write_bytes(broken)

    with pytest.raises(SheetImageError, match="damaged-cmyk.jpg: damaged JPEG data"):
        load_sheet_image(path, demo)


@pytest.mark.parametrize("byte_order", ["II", "MM"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_opencv(orientation: int, byte_order: str) -> None:
    # A page without symmetry, so that each orientation gives another page.
    rows, columns = np.mgrid[0:96, 0:64]
    page = np.asarray((rows * 2 + columns * 5) % 256, np.uint8)
    ok, encoded = cv2.imencode(".jpg", page, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    data = np.frombuffer(
        jpeg_with_orientation(encoded.tobytes(), orientation, byte_order), np.uint8
    )
    upright = (96, 64) if orientation < 5 else (64, 96)
    for scale, flags in (
        (1, cv2.IMREAD_GRAYSCALE),
        (2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
    ):
        expected = cv2.imdecode(data, flags)
        assert expected.shape == (upright[0] // scale, upright[1] // scale)
        np.testing.assert_array_equal(decode_grey(data, scale == 2), expected)


def test_empty_file_is_rejected(demo: Template, tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(SheetImageError, match="empty"):
        load_sheet_image(path, demo)


def test_image_under_half_page_is_rejected(demo: Template, tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    cv2.imwrite(str(path), np.full((1100, 1700), 235, np.uint8))
    with pytest.raises(SheetImageError, match="smaller than half"):
        load_sheet_image(path, demo)


def test_image_at_half_page_is_accepted(demo: Template, tmp_path: Path) -> None:
    path = tmp_path / "half.png"
    cv2.imwrite(str(path), np.full((1200, 850), 235, np.uint8))
    assert load_sheet_image(path, demo).shape == (2400, 1700)


def test_opencv_pixel_limit_matches_engine() -> None:
    assert os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] == str(image_module.MAX_PIXELS)
