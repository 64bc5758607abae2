"""Bubble measurement: order, scale, paper level, vectorised sampling."""

from __future__ import annotations

import ast
import inspect
import textwrap
import time

import cv2
import numpy as np
import pytest

from omr_desktop.engine import align, measure
from omr_desktop.engine.image import decode_sheet_bytes
from omr_desktop.engine.layout import field_layout
from omr_desktop.engine.measure import measure_fills
from omr_desktop.engine.profile import MeasurementSettings
from omr_desktop.engine.synthetic import random_truth, render_sheet, render_sheet_image
from omr_desktop.engine.template import Template

SETTINGS = MeasurementSettings()


def test_fills_follow_truth_in_template_order(
    demo: Template, rng: np.random.Generator
) -> None:
    truth = random_truth(demo, rng, "clean")
    fills = measure_fills(render_sheet_image(demo, truth, rng), demo, SETTINGS)
    kinds = np.array(truth.kinds)
    assert fills.shape == (demo.n_bubbles,)
    assert fills.dtype == np.float32
    assert fills[kinds == "solid"].min() > 0.7
    assert fills[kinds == "blank"].max() < 0.05


def test_fill_is_close_to_mark_darkness(
    demo: Template, rng: np.random.Generator
) -> None:
    truth = random_truth(demo, rng, "light")
    image = decode_sheet_bytes(render_sheet(demo, truth, rng, quality=80), demo)
    fills = measure_fills(image, demo, SETTINGS)
    light = np.array(truth.kinds) == "light"
    error = np.abs(fills[light] - truth.darkness[light])
    assert error.max() < 0.04


def test_paper_level_follows_shading(demo: Template, rng: np.random.Generator) -> None:
    truth = random_truth(demo, rng, "gradient")
    image = render_sheet_image(demo, truth, rng)
    assert image[-40:, 20:60].mean() < 160  # the bottom really is shaded
    fills = measure_fills(image, demo, SETTINGS)
    blank = np.array(truth.kinds) == "blank"
    assert fills[blank].max() < 0.05


def _loops(function: object) -> list[ast.AST]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    kinds = (ast.For, ast.While, ast.comprehension)
    return [node for node in ast.walk(tree) if isinstance(node, kinds)]


def test_sampling_has_no_python_loop_over_bubbles() -> None:
    for function in (
        measure.measure_fills,
        measure.paper_map,
        measure._sample_index,
        align.find_block_shifts,
        align._scores,
        align._box_means,
    ):
        assert _loops(function) == [], function.__name__


def test_block_contrast_loops_over_runs(demo: Template) -> None:
    # _block_contrast loops over runs of equal fields, and _run_contrast
    # over the bubbles of one field: each step is a whole-array operation.
    search = measure._geometry(demo, SETTINGS, 2).shift_search
    assert search is not None
    assert len(search.runs) <= 3
    assert max(run.bubbles for run in search.runs) <= 10
    assert sum(run.fields * run.bubbles for run in search.runs) == demo.n_bubbles


def test_block_contrast_sums_mean_minus_minimum(demo: Template) -> None:
    search = measure._geometry(demo, SETTINGS, 2).shift_search
    assert search is not None
    layout = field_layout(demo)
    means = np.random.default_rng(5).uniform(0, 255, (demo.n_bubbles, 3))
    expected = np.zeros((len(layout.block_names), 3))
    for field, block in enumerate(layout.field_block):
        members = means[layout.index[field, : layout.counts[field]]]
        expected[block] += members.mean(axis=0) - members.min(axis=0)
    assert np.allclose(align._block_contrast(means, search), expected, rtol=1e-12)


def test_search_window_matches_whole_page(
    demo: Template, rng: np.random.Generator
) -> None:
    truth = random_truth(demo, rng, "clean")
    image = render_sheet_image(demo, truth, rng)[::2, ::2].copy()
    search = measure._geometry(demo, SETTINGS, 2).shift_search
    assert search is not None
    assert search.window != (0, image.shape[0], 0, image.shape[1])
    top, bottom, left, right = search.window
    window = np.asarray(cv2.integral(image[top:bottom, left:right]), np.int32).ravel()
    whole = np.asarray(cv2.integral(image), np.int32).ravel()
    row, column = np.divmod(search.corner_index, search.stride)
    whole_index = (row + top) * (image.shape[1] + 1) + column + left
    for dx, dy in [(0, 0), (-7, 7), (7, -7)]:
        moved = search.corner_index + dy * search.stride + dx
        whole_moved = whole_index + dy * (image.shape[1] + 1) + dx
        assert np.array_equal(
            align._box_means(window, search, moved[:, :, None]),
            align._box_means(whole, search, whole_moved[:, :, None]),
        )


def test_measure_is_a_few_ms(demo: Template, rng: np.random.Generator) -> None:
    image = render_sheet_image(demo, random_truth(demo, rng, "clean"), rng)
    measure_fills(image, demo, SETTINGS)  # builds the cached geometry
    start = time.perf_counter()
    for _ in range(10):
        measure_fills(image, demo, SETTINGS)
    per_sheet_ms = (time.perf_counter() - start) * 100
    # About 4 ms on a 2-core CI runner; 25 leaves room for a loaded machine
    # but fails a per-bubble Python loop (about 8 ms for 750 bubbles alone).
    assert per_sheet_ms < 25


def test_wrong_image_shape_is_rejected(demo: Template) -> None:
    image = np.zeros((100, 100), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        measure_fills(image, demo, SETTINGS)


def test_shifted_scan_is_found_by_block_search(
    demo: Template, rng: np.random.Generator
) -> None:
    truth = random_truth(demo, rng, "clean")
    image = render_sheet_image(demo, truth, rng)
    shifted = np.full_like(image, 235)
    shifted[6:, 7:] = image[:-6, :-7]  # 7 px right, 6 px down
    fills = measure_fills(shifted, demo, SETTINGS)
    kinds = np.array(truth.kinds)
    assert fills[kinds == "solid"].min() > 0.7
    assert fills[kinds == "blank"].max() < 0.1


def test_without_search_a_shift_loses_marks(
    demo: Template, rng: np.random.Generator
) -> None:
    truth = random_truth(demo, rng, "clean")
    image = render_sheet_image(demo, truth, rng)
    shifted = np.full_like(image, 235)
    shifted[12:, 12:] = image[:-12, :-12]
    fills = measure_fills(shifted, demo, MeasurementSettings(align_search=0.0))
    assert fills[np.array(truth.kinds) == "solid"].min() < 0.7


def test_half_page_measures_like_full_page(
    demo: Template, rng: np.random.Generator
) -> None:
    truth = random_truth(demo, rng, "light")
    data = render_sheet(demo, truth, rng)
    full = measure_fills(decode_sheet_bytes(data, demo), demo, SETTINGS)
    half_image = decode_sheet_bytes(data, demo, keep_reduced=True)
    assert half_image.shape == (1200, 850)
    half = measure_fills(half_image, demo, SETTINGS)
    assert np.abs(full - half).max() < 0.03


@pytest.mark.parametrize(
    ("dx", "dy"),
    [(0, 0), (3, -2), (-200, 0), (0, -300), (900, 5), (-4, 1300)],
)
def test_shifted_samples_clip_to_page_edge(demo: Template, dx: int, dy: int) -> None:
    geometry = measure._geometry(demo, SETTINGS, 2)
    offset = np.zeros((demo.n_bubbles, 2), dtype=np.intp)
    offset[::2] = (dx, dy)  # every other bubble moves, the rest stays
    x = np.clip(geometry.sample_x + offset[:, 0:1], 0, geometry.width - 1)
    y = np.clip(geometry.sample_y + offset[:, 1:2], 0, geometry.height - 1)
    index = measure._shifted_index(geometry, offset)
    assert index.shape == geometry.sample_index.shape
    assert np.array_equal(index, y * geometry.width + x)


@pytest.mark.parametrize("dy", [0, -500, 2000])
def test_box_means_are_clipped_corner_sums(demo: Template, dy: int) -> None:
    # A search over a page whose boxes reach its edge reads the whole page
    # and clips each shifted corner to the integral image.
    # The demo's boxes end 1 px inside this image, closer than the search
    # limit.
    shape = (1171, 750)
    image = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    layout = field_layout(demo)
    search = align.build_shift_search(layout, 0.5, (1200, 850), image_scale=2)
    edge = align.build_shift_search(layout, 0.5, shape, image_scale=2)
    assert edge.clip
    assert edge.window == (0, 1171, 0, 750)
    integral = np.asarray(cv2.integral(image), np.int32).ravel()
    offsets = np.tile(np.array([[dy * edge.stride + 1]]), (demo.n_bubbles, 2))
    offsets[::3, 1] = 0  # one shift mixes moved and unmoved boxes
    index = np.clip(edge.corner_index[:, :, None] + offsets, 0, integral.size - 1)
    tl, tr, bl, br = integral[index].astype(np.float64)
    expected = (br - tr - bl + tl) / edge.area[:, None]
    means = align._box_means(integral, edge, index)
    assert means.dtype == np.float64
    assert np.array_equal(means, expected)
    assert not search.clip
