"""Sheet image loading: decode by content, resize, reject bad files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from omr_desktop.engine.image import (
    SheetImageError,
    load_sheet_image,
    uses_reduced_decode,
)
from omr_desktop.engine.synthetic import random_truth, render_sheet
from omr_desktop.engine.template import Template, load_template
from tests.corrupt_images import png_claiming_size

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
    with pytest.raises(SheetImageError, match="huge.png: not a readable image"):
        load_sheet_image(path, demo)


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
