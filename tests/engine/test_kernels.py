"""Compiled measuring kernels: present, identical to the numpy path, guarded.

Scores and fills are compared exactly (``np.array_equal``), so that a sheet
reads the same whichever path an install has.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from omr_desktop.engine import align, kernels, measure
from omr_desktop.engine.image import decode_sheet_bytes, load_sheet_for_measuring
from omr_desktop.engine.layout import field_layout
from omr_desktop.engine.measure import measure_fills
from omr_desktop.engine.profile import BUILTIN_PROFILES, MeasurementSettings
from omr_desktop.engine.synthetic import random_truth, render_sheet, render_sheet_image
from omr_desktop.engine.template import Template, TemplateError, load_template

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "samples"
COMPILED = kernels.compiled


@pytest.fixture
def numpy_only() -> Iterator[None]:
    """Measure with the numpy path for the duration of a test."""
    with kernels.numpy_path():
        yield


def _both_paths(
    image: npt.NDArray[np.uint8], template: Template, settings: MeasurementSettings
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Return the fills of the compiled path and of the numpy path."""
    assert COMPILED is not None
    compiled = measure_fills(image, template, settings)
    with kernels.numpy_path():
        reference = measure_fills(image, template, settings)
    return compiled, reference


def _moved(image: npt.NDArray[np.uint8], dx: int, dy: int) -> npt.NDArray[np.uint8]:
    """Return the page moved by (dx, dy) px, paper grey where it came from."""
    moved = np.full_like(image, 235)
    height, width = image.shape
    moved[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = image[
        max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return moved


def test_install_built_the_kernels() -> None:
    # pip install builds them (hatch_build.py); without them measuring
    # runs on the slower numpy path.
    assert COMPILED is not None, kernels.unavailable_reason
    assert COMPILED.VERSION == kernels.VERSION
    assert hasattr(COMPILED, "field_contrasts")
    assert hasattr(COMPILED, "bubble_fills")


@pytest.mark.parametrize("profile_id", sorted(BUILTIN_PROFILES))
@pytest.mark.parametrize("condition", ["demo", "light", "gradient", "clean"])
def test_demo_fills_match_numpy(
    demo: Template, profile_id: int, condition: str
) -> None:
    rng = np.random.default_rng(profile_id * 100 + len(condition))
    settings = BUILTIN_PROFILES[profile_id].settings.measurement
    for quality in (75, 90):
        data = render_sheet(
            demo, random_truth(demo, rng, condition), rng, quality=quality
        )
        for keep_reduced in (True, False):
            image = decode_sheet_bytes(data, demo, keep_reduced=keep_reduced)
            compiled, reference = _both_paths(image, demo, settings)
            assert np.array_equal(compiled, reference), (quality, keep_reduced)


@pytest.mark.parametrize(
    ("dx", "dy"), [(7, 6), (-5, 4), (12, -12), (-3, -9), (40, 0), (0, -60)]
)
def test_shifted_demo_fills_match_numpy(
    demo: Template, rng: np.random.Generator, dx: int, dy: int
) -> None:
    # Shifts within the search limit are found and applied; larger ones
    # leave blocks in place. Both paths must agree either way.
    image = render_sheet_image(demo, random_truth(demo, rng, "clean"), rng)
    moved = _moved(image, dx, dy)
    compiled, reference = _both_paths(moved, demo, MeasurementSettings())
    assert np.array_equal(compiled, reference)
    half = moved[::2, ::2].copy()
    compiled, reference = _both_paths(half, demo, MeasurementSettings())
    assert np.array_equal(compiled, reference)


def test_found_shifts_match_numpy(demo: Template, rng: np.random.Generator) -> None:
    image = render_sheet_image(demo, random_truth(demo, rng, "clean"), rng)
    geometry = measure._geometry(demo, MeasurementSettings(), 1)
    search = geometry.shift_search
    assert search is not None
    layout = field_layout(demo)
    moved_any = False
    for dx, dy in [(0, 0), (7, 6), (-8, 3), (5, -10)]:
        reduced = measure.shrink_by(_moved(image, dx, dy), search.scale)
        compiled = align.find_block_shifts(reduced, layout, search)
        with kernels.numpy_path():
            reference = align.find_block_shifts(reduced, layout, search)
        assert np.array_equal(compiled, reference), (dx, dy)
        moved_any = moved_any or bool(compiled.any())
    assert moved_any  # the comparison covered real moves, not only zeros


def _sample_images() -> list[tuple[str, Path]]:
    pairs = []
    for folder in sorted(SAMPLES_DIR.iterdir()):
        if (folder / "template.json").is_file():
            images = sorted(
                p for p in folder.iterdir() if p.suffix in {".png", ".jpg", ".jpeg"}
            )
            pairs.extend((folder.name, image) for image in images)
    return pairs


@pytest.mark.parametrize(
    ("sample", "path"), _sample_images(), ids=lambda v: getattr(v, "name", v)
)
def test_real_sample_fills_match_numpy(sample: str, path: Path) -> None:
    # Real templates have other bubble sizes, full-page decodes, tone
    # settings and blocks near the page edge.
    template = load_template(SAMPLES_DIR / sample / "template.json")
    image = load_sheet_for_measuring(path, template)
    for profile in BUILTIN_PROFILES.values():
        compiled, reference = _both_paths(image, template, profile.settings.measurement)
        assert np.array_equal(compiled, reference), profile.name


@pytest.mark.parametrize("dy", [0, -3, 6, -500, 2000])
def test_edge_search_scores_match_numpy(demo: Template, dy: int) -> None:
    # A page whose boxes reach its edge: the search reads the whole page
    # and clips corners, which the kernel must do the same way.
    shape = (1171, 750)
    image = np.random.default_rng(abs(dy) + 10).integers(0, 256, shape, dtype=np.uint8)
    layout = field_layout(demo)
    edge = align.build_shift_search(layout, 0.5, shape, image_scale=2)
    assert edge.clip
    integral = np.asarray(cv2.integral(image), np.int32).ravel()
    shifts = np.zeros((len(layout.block_names), 9, 2), dtype=np.intp)
    shifts[:, :, 1] = dy
    shifts[:, :, 0] = np.arange(-4, 5)
    compiled = align._scores(integral, edge, layout, shifts)
    coarse = align._coarse_contrast(integral, edge)
    with kernels.numpy_path():
        reference = align._scores(integral, edge, layout, shifts)
        coarse_reference = align._coarse_contrast(integral, edge)
    assert np.array_equal(compiled, reference)
    assert np.array_equal(coarse, coarse_reference)


def test_numpy_path_still_reads(
    demo: Template, rng: np.random.Generator, numpy_only: None
) -> None:
    truth = random_truth(demo, rng, "clean")
    fills = measure_fills(
        render_sheet_image(demo, truth, rng), demo, MeasurementSettings()
    )
    kinds = np.array(truth.kinds)
    assert kernels.compiled is None
    assert fills[kinds == "solid"].min() > 0.7
    assert fills[kinds == "blank"].max() < 0.05


def _fills_arguments(
    image: npt.NDArray[np.uint8], geometry: measure._Geometry
) -> list[object]:
    n_bubbles = geometry.grid_x.shape[0]
    return measure.bubble_fills_arguments(
        image,
        geometry,
        geometry.no_shift,
        np.full(n_bubbles, 230, np.float32),
        10,
        np.empty(n_bubbles, np.float32),
    )


@pytest.mark.parametrize(
    ("position", "value", "message"),
    [
        (0, np.zeros((10, 10), np.uint8), "image has 100 bytes"),
        (2, 5000, "image has"),
        (2, 2**62, "image: invalid size"),
        (12, 2**61, "columns: invalid size"),
        (3, np.zeros(7, np.int32), "columns has 28 bytes"),
        (5, 65, "grid side 65"),
        (6, np.full(1, 99, np.int32), "grid_column has 4 bytes"),
        (10, -1, "kth -1"),
        (11, np.empty(3, np.float32), "out has 12 bytes"),
    ],
)
def test_bubble_fills_rejects_bad_buffers(
    demo: Template, position: int, value: object, message: str
) -> None:
    assert COMPILED is not None
    geometry = measure._geometry(demo, MeasurementSettings(), 2)
    arguments = _fills_arguments(np.zeros((1200, 850), np.uint8), geometry)
    arguments[position] = value
    with pytest.raises(ValueError, match=message):
        COMPILED.bubble_fills(*arguments)


def test_bubble_fills_rejects_sample_outside_grid(demo: Template) -> None:
    assert COMPILED is not None
    geometry = measure._geometry(demo, MeasurementSettings(), 2)
    arguments = _fills_arguments(np.zeros((1200, 850), np.uint8), geometry)
    outside = geometry.grid_column.copy()
    outside[3] = geometry.grid_x.shape[1]
    arguments[6] = outside
    with pytest.raises(ValueError, match="sample 3 lies outside"):
        COMPILED.bubble_fills(*arguments)


def test_kernels_reject_non_contiguous_and_read_only_output(demo: Template) -> None:
    assert COMPILED is not None
    geometry = measure._geometry(demo, MeasurementSettings(), 2)
    page = np.zeros((1200, 1700), np.uint8)
    arguments = _fills_arguments(page[:, :850].copy(), geometry)
    arguments[0] = page[:, ::2]  # a view with a stride of 2 bytes
    with pytest.raises(ValueError, match="not C-contiguous"):
        COMPILED.bubble_fills(*arguments)
    arguments = _fills_arguments(page[:, :850].copy(), geometry)
    read_only = np.empty(geometry.grid_x.shape[0], np.float32)
    read_only.flags.writeable = False
    arguments[11] = read_only
    with pytest.raises(TypeError, match="read-write"):
        COMPILED.bubble_fills(*arguments)


def test_field_contrasts_rejects_bad_field(demo: Template) -> None:
    assert COMPILED is not None
    search = measure._geometry(demo, MeasurementSettings(), 2).shift_search
    assert search is not None
    starts = search.field_starts.copy()
    starts[-1] += 1  # the last field runs past the last bubble
    arguments = _scores_arguments(search)
    arguments[4] = starts
    with pytest.raises(ValueError, match="invalid bubbles"):
        COMPILED.field_contrasts(*arguments)


def _labels(first: int, count: int) -> str:
    return f"q{first}..{first + count - 1}" if count > 1 else f"q{first}"


def _random_template(rng: np.random.Generator) -> Template:
    """Build a template of random page, bubble size and blocks, some at an edge."""
    width = int(rng.integers(600, 2000))
    height = int(rng.integers(800, 2600))
    bubble = int(rng.integers(10, 40))
    blocks: dict[str, object] = {}
    for number in range(int(rng.integers(1, 5))):
        options = int(rng.integers(1, 8))
        fields = int(rng.integers(1, 12))
        gap = bubble + int(rng.integers(4, 20))
        horizontal = bool(rng.integers(0, 2))
        span_x = options * gap if horizontal else fields * gap
        span_y = fields * gap if horizontal else options * gap
        # Some blocks touch the page edge, so that the search and the
        # samples clip there.
        at_edge = rng.random() < 0.3
        x = 0 if at_edge else int(rng.integers(0, max(1, width - span_x - bubble)))
        y = int(rng.integers(0, max(1, height - span_y - bubble)))
        blocks[f"Block{number}"] = {
            "bubbleValues": [chr(ord("A") + i) for i in range(options)],
            "direction": "horizontal" if horizontal else "vertical",
            "origin": [x, y],
            "fieldLabels": [_labels(100 * number + 1, fields)],
            "bubblesGap": gap,
            "labelsGap": gap,
        }
    return load_template(
        {
            "pageDimensions": [width, height],
            "bubbleDimensions": [bubble, bubble],
            "fieldBlocks": blocks,
            "preProcessors": [],
        }
    )


def test_random_template_fills_match_numpy() -> None:
    rng = np.random.default_rng(2026)
    compared = 0
    for _ in range(40):
        try:
            template = _random_template(rng)
        except TemplateError:
            continue  # blocks that overlap or leave the page
        image = render_sheet_image(template, random_truth(template, rng, "demo"), rng)
        moved = _moved(image, int(rng.integers(-8, 9)), int(rng.integers(-8, 9)))
        half_height, half_width = template.page_height // 2, template.page_width // 2
        half = moved[: 2 * half_height : 2, : 2 * half_width : 2].copy()
        for page in (moved, half):
            for search in (0.5, 1.0):
                settings = MeasurementSettings(align_search=search)
                compiled, reference = _both_paths(page, template, settings)
                assert np.array_equal(compiled, reference), (page.shape, search)
        compared += 1
    assert compared >= 20


def _scores_arguments(search: align.ShiftSearch) -> list[object]:
    n_blocks, n_shifts = search.coarse_offsets.shape
    return [
        np.zeros(search.stride * (search.window[1] - search.window[0] + 1), np.int32),
        search.corner_index,
        search.coarse_offsets,
        search.area,
        search.field_starts,
        search.field_block,
        np.empty((search.field_block.size, n_shifts)),
        search.area.size,
        search.field_block.size,
        n_blocks,
        n_shifts,
    ]


@pytest.mark.parametrize(
    ("position", "value", "message"),
    [
        (0, np.zeros(0, np.int32), "invalid sizes: integral image of 0"),
        (7, 2**62, "corners: invalid size"),
        (9, 2**62, "offsets: invalid size"),
        (10, 2**62, "offsets: invalid size"),
        (8, 2**63 - 1, "invalid sizes"),
    ],
)
def test_field_contrasts_rejects_bad_sizes(
    demo: Template, position: int, value: object, message: str
) -> None:
    assert COMPILED is not None
    search = measure._geometry(demo, MeasurementSettings(), 2).shift_search
    assert search is not None
    arguments = _scores_arguments(search)
    arguments[position] = value
    with pytest.raises(ValueError, match=message):
        COMPILED.field_contrasts(*arguments)


def test_field_contrasts_rejects_outside_corner(demo: Template) -> None:
    assert COMPILED is not None
    search = measure._geometry(demo, MeasurementSettings(), 2).shift_search
    assert search is not None
    arguments = _scores_arguments(search)
    corners = search.corner_index.copy()
    corners[2, 5] = -1
    arguments[1] = corners
    with pytest.raises(ValueError, match="corner .* is -1, outside"):
        COMPILED.field_contrasts(*arguments)


def test_huge_shifts_clip_like_edge_shifts(demo: Template) -> None:
    # A shift far past the page puts every sample on the page's edge, as a
    # shift of exactly the page size does, without overflowing.
    assert COMPILED is not None
    search = measure._geometry(demo, MeasurementSettings(), 2).shift_search
    assert search is not None
    geometry = measure._geometry(demo, MeasurementSettings(), 2)
    page = np.random.default_rng(8).integers(0, 256, (1200, 850), dtype=np.uint8)
    results = []
    for dx, dy in [(2**63 - 1, -(2**63)), (850, -1200)]:
        arguments = _fills_arguments(page, geometry)
        shift = np.empty((geometry.grid_x.shape[0], 2), np.int64)
        shift[:] = (dx, dy)
        arguments[8] = shift
        COMPILED.bubble_fills(*arguments)
        results.append(arguments[11])
    assert np.array_equal(results[0], results[1])
    arguments = _scores_arguments(search)
    arguments[2] = np.full_like(search.coarse_offsets, 2**63 - 1)
    COMPILED.field_contrasts(*arguments)
    assert np.isfinite(arguments[6]).all()


def test_output_sharing_an_input_is_rejected(demo: Template) -> None:
    # Writing the output would change the indices the kernel reads next.
    assert COMPILED is not None
    geometry = measure._geometry(demo, MeasurementSettings(), 2)
    search = geometry.shift_search
    assert search is not None
    arguments = _scores_arguments(search)
    shared = np.zeros(search.field_block.size * search.coarse_offsets.shape[1])
    field_block = shared.view(np.int64)[: search.field_block.size]
    field_block[:] = search.field_block
    arguments[5] = field_block
    arguments[6] = shared
    with pytest.raises(ValueError, match="out shares memory with field_block"):
        COMPILED.field_contrasts(*arguments)
    arguments = _fills_arguments(np.zeros((1200, 850), np.uint8), geometry)
    paper = np.full(geometry.grid_x.shape[0], 230, np.float32)
    arguments[9] = paper
    arguments[11] = paper
    with pytest.raises(ValueError, match="out shares memory with paper"):
        COMPILED.bubble_fills(*arguments)


def test_unaligned_buffer_is_rejected(demo: Template) -> None:
    assert COMPILED is not None
    geometry = measure._geometry(demo, MeasurementSettings(), 2)
    arguments = _fills_arguments(np.zeros((1200, 850), np.uint8), geometry)
    n_bubbles = geometry.grid_x.shape[0]
    raw = np.zeros(4 * n_bubbles + 1, np.uint8)
    arguments[9] = raw[1:].view(np.float32)  # one byte past an aligned start
    with pytest.raises(ValueError, match="paper is not aligned to 4 bytes"):
        COMPILED.bubble_fills(*arguments)


_MUTATING_SCRIPT = """
import threading
import numpy as np
from omr_desktop.engine import _kernels as k

stop = False

def flip(array, bad):
    good = array[0]
    while not stop:
        array[0] = bad
        array[0] = good

width = height = 64
side, n_samples, n_bubbles = 8, 64, 2000
grid_column = np.tile(np.arange(side, dtype=np.int32), side)
grid_row = np.repeat(np.arange(side, dtype=np.int32), side)
fills_arguments = (
    np.zeros((height, width), np.uint8), width, height,
    np.zeros((n_bubbles, side), np.int32), np.zeros((n_bubbles, side), np.int32),
    side, grid_column, grid_row, np.zeros((n_bubbles, 2), np.int64),
    np.ones(n_bubbles, np.float32), 10, np.empty(n_bubbles, np.float32),
    n_bubbles, n_samples,
)
n_fields, n_shifts = 1000, 200
field_block = np.zeros(n_fields, np.int64)
contrast_arguments = (
    np.zeros(100, np.int32), np.zeros((4, n_fields), np.int64),
    np.zeros((1, n_shifts), np.int64), np.ones(n_fields),
    np.arange(n_fields + 1, dtype=np.int64), field_block,
    np.empty((n_fields, n_shifts)), n_fields, n_fields, 1, n_shifts,
)
threads = [
    threading.Thread(target=flip, args=(grid_column, 10**9)),
    threading.Thread(target=flip, args=(field_block, 10**12)),
]
for thread in threads:
    thread.start()
rejected = 0
for _ in range(300):
    for function, arguments in (
        (k.bubble_fills, fills_arguments),
        (k.field_contrasts, contrast_arguments),
    ):
        try:
            function(*arguments)
        except ValueError:
            rejected += 1
stop = True
for thread in threads:
    thread.join()
print("finished", rejected)
"""


def test_indices_written_during_call_cannot_crash(tmp_path: Path) -> None:
    # The kernels release the GIL, so another thread may write to an index
    # array while they run. In a child process, so that a crash is seen.
    script = tmp_path / "mutate.py"
    script.write_text(_MUTATING_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("finished"), done.stdout


def test_module_of_other_version_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "VERSION", kernels.VERSION + 1)
    module, reason = kernels._load()
    assert module is None
    assert f"not {kernels.VERSION}" in reason
    assert "reinstall" in reason


def test_disable_variable_selects_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.DISABLE_VARIABLE, "1")
    module, reason = kernels._load()
    assert module is None
    assert reason == f"{kernels.DISABLE_VARIABLE}=1 is set"


def test_numpy_path_is_logged_once(
    demo: Template,
    rng: np.random.Generator,
    numpy_only: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(kernels, "_reported", False)
    monkeypatch.setattr(kernels, "unavailable_reason", "no compiler")
    image = render_sheet_image(demo, random_truth(demo, rng, "clean"), rng)
    with caplog.at_level("WARNING", logger=kernels.__name__):
        measure_fills(image, demo, MeasurementSettings())
        measure_fills(image, demo, MeasurementSettings())
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "Measuring with numpy only, about 0.9 ms a sheet slower: no compiler."
    ]
