"""Measure how filled each bubble is, relative to the sheet's own paper.

A fill is ``1 - grey / paper``: 0 where the bubble looks like the paper
around it and 1 for black ink, the same scale as the darkness of a mark.
Four steps, each vectorised over the whole sheet:

1. Tone: the Levels curve and blurs (`apply_tone`).
2. Paper level: a morphological closing of a reduced copy of the page
   removes everything narrower than ``paper_window`` bubbles (bubbles,
   marks, print) and keeps the paper, shading included (`paper_map`).
3. Alignment: each block moves by the shift that puts its boxes on the
   marks (`omr_desktop.engine.align`).
4. Sampling: one numpy gather of a fixed grid of points inside each
   bubble's central ellipse, then a per-bubble quantile (`measure_fills`).

The point grids are built once per template and settings and cached on the
template, so a sheet costs one gather and one partition. Where the install
has the compiled kernels (`omr_desktop.engine.kernels`), steps 3 and 4 run
in them instead, with the same results.
"""

from __future__ import annotations

import threading
import types
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from omr_desktop.engine import kernels
from omr_desktop.engine.align import (
    ShiftSearch,
    build_shift_search,
    find_block_shifts,
    reduced_scale,
)
from omr_desktop.engine.image import shrink_by
from omr_desktop.engine.layout import field_layout
from omr_desktop.engine.profile import MeasurementSettings
from omr_desktop.engine.template import Template, ToneSettings

# Sample grid side per bubble, in points. 12 x 12 clipped to the ellipse is
# about 110 points: enough for a stable quantile (a 0.01 fill step is one
# point), and a 750-bubble sheet stays near 85 000 samples.
_MAX_GRID = 12
_MIN_GRID = 4

_CACHE_ATTR = "_measure_geometry_cache"
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class _Geometry:
    """Precomputed sampling positions for one template and settings."""

    width: int  # image width at this image scale, px
    height: int  # image height at this image scale, px
    sample_x: npt.NDArray[np.intp]  # (n_bubbles, K) page x of each sample
    sample_y: npt.NDArray[np.intp]  # (n_bubbles, K) page y of each sample
    sample_index: npt.NDArray[np.intp]  # (n_bubbles, K) flat page indices
    sample_x_range: npt.NDArray[np.intp]  # (n_bubbles, 2) min and max of sample_x
    sample_y_range: npt.NDArray[np.intp]  # (n_bubbles, 2) min and max of sample_y
    # The same samples for the compiled kernel, in a seventh of the memory:
    # sample k of bubble b is at x = grid_x[b, grid_column[k]] and
    # y = grid_y[b, grid_row[k]].
    grid_x: npt.NDArray[np.int32]  # (n_bubbles, side) x of each grid column
    grid_y: npt.NDArray[np.int32]  # (n_bubbles, side) y of each grid row
    grid_column: npt.NDArray[np.int32]  # (K,) column of each sample
    grid_row: npt.NDArray[np.int32]  # (K,) row of each sample
    no_shift: npt.NDArray[np.int64]  # (n_bubbles, 2) zeros
    paper_scale: int  # page px per paper-map px
    paper_shape: tuple[int, int]  # (height, width) of the paper map
    paper_kernel: int  # closing kernel side, paper-map px
    paper_index: npt.NDArray[np.intp]  # (n_bubbles,) flat paper-map indices
    shift_search: ShiftSearch | None  # None when the search is off


def effective_tone(
    template: Template, measurement: MeasurementSettings
) -> ToneSettings:
    """Combine the template's tone preProcessors with the profile's settings.

    A template's own Levels curve replaces the profile's, and a blur that
    the template requests replaces the profile's blur of the same kind,
    because the template's author tuned them for that print.
    """
    tone = template.tone
    use_template_levels = (tone.levels_low, tone.levels_high, tone.levels_gamma) != (
        0.0,
        1.0,
        1.0,
    )
    source = tone if use_template_levels else measurement
    return ToneSettings(
        levels_low=source.levels_low,
        levels_high=source.levels_high,
        levels_gamma=source.levels_gamma,
        gaussian_ksize=tone.gaussian_ksize or measurement.blur_ksize,
        gaussian_sigma=tone.gaussian_sigma,
        median_ksize=tone.median_ksize or measurement.median_ksize,
    )


def _levels_lut(tone: ToneSettings) -> npt.NDArray[np.uint8]:
    low, high = tone.levels_low * 255.0, tone.levels_high * 255.0
    ramp = np.clip((np.arange(256, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    return np.round(255.0 * ramp ** (1.0 / tone.levels_gamma)).astype(np.uint8)


def apply_tone(
    image: npt.NDArray[np.uint8], tone: ToneSettings
) -> npt.NDArray[np.uint8]:
    """Return the page after the Levels curve, then Gaussian, then median blur."""
    out = image
    if (tone.levels_low, tone.levels_high, tone.levels_gamma) != (0.0, 1.0, 1.0):
        out = np.asarray(cv2.LUT(out, _levels_lut(tone)), dtype=np.uint8)
    if tone.gaussian_ksize > 1:
        k = tone.gaussian_ksize
        out = np.asarray(cv2.GaussianBlur(out, (k, k), tone.gaussian_sigma), np.uint8)
    if tone.median_ksize > 1:
        out = np.asarray(cv2.medianBlur(out, tone.median_ksize), dtype=np.uint8)
    return out


def _odd(value: float) -> int:
    return max(3, int(round(value)) | 1)


def _build_geometry(
    template: Template, measurement: MeasurementSettings, image_scale: int
) -> _Geometry:
    layout = field_layout(template)
    width, height = (
        template.page_width // image_scale,
        template.page_height // image_scale,
    )
    x, y, w, h = (layout.boxes / image_scale).T
    inset = measurement.sample_inset
    side = int(np.clip(np.ceil(inset * max(w.max(), h.max())), _MIN_GRID, _MAX_GRID))
    u = (np.arange(side) + 0.5) / side * 2.0 - 1.0
    gu, gv = np.meshgrid(u, u)
    inside = gu**2 + gv**2 <= 1.0
    gu, gv = gu[inside], gv[inside]
    grid_row, grid_column = np.nonzero(inside)

    cx, cy = x + w / 2.0, y + h / 2.0
    rx, ry = inset * w / 2.0, inset * h / 2.0
    px = np.floor(cx[:, None] + gu[None, :] * rx[:, None])
    py = np.floor(cy[:, None] + gv[None, :] * ry[:, None])
    px = np.clip(px, 0, width - 1).astype(np.intp)
    py = np.clip(py, 0, height - 1).astype(np.intp)
    # The same floor and clip at each grid column and row: a sample's x
    # depends only on its column, because gu takes the column's u.
    grid_x = np.clip(np.floor(cx[:, None] + u[None, :] * rx[:, None]), 0, width - 1)
    grid_y = np.clip(np.floor(cy[:, None] + u[None, :] * ry[:, None]), 0, height - 1)

    bubble_px = float(np.median(np.maximum(w, h)))
    scale = reduced_scale(bubble_px)
    shape = (-(-height // scale), -(-width // scale))
    kernel = _odd(measurement.paper_window * bubble_px / scale)
    mx = np.clip((cx / scale).astype(np.intp), 0, shape[1] - 1)
    my = np.clip((cy / scale).astype(np.intp), 0, shape[0] - 1)
    search = None
    if measurement.align_search > 0:
        search = build_shift_search(
            layout,
            measurement.align_search,
            (height, width),
            image_scale,
        )
    return _Geometry(
        width=width,
        height=height,
        sample_x=px,
        sample_y=py,
        sample_index=py * width + px,
        sample_x_range=np.stack([px.min(axis=1), px.max(axis=1)], axis=1),
        sample_y_range=np.stack([py.min(axis=1), py.max(axis=1)], axis=1),
        grid_x=np.ascontiguousarray(grid_x, dtype=np.int32),
        grid_y=np.ascontiguousarray(grid_y, dtype=np.int32),
        grid_column=np.ascontiguousarray(grid_column, dtype=np.int32),
        grid_row=np.ascontiguousarray(grid_row, dtype=np.int32),
        no_shift=np.zeros((len(cx), 2), dtype=np.int64),
        paper_scale=scale,
        paper_shape=shape,
        paper_kernel=kernel,
        paper_index=my * shape[1] + mx,
        shift_search=search,
    )


def _geometry(
    template: Template, measurement: MeasurementSettings, image_scale: int
) -> _Geometry:
    key = (
        measurement.sample_inset,
        measurement.paper_window,
        measurement.align_search,
        image_scale,
    )
    cache: dict[tuple[float, float, float, int], _Geometry] | None = (
        template.__dict__.get(_CACHE_ATTR)
    )
    if cache is None:
        with _cache_lock:
            cache = template.__dict__.setdefault(_CACHE_ATTR, {})
    geometry = cache.get(key)
    if geometry is None:
        geometry = _build_geometry(template, measurement, image_scale)
        cache[key] = geometry
    return geometry


def paper_map(reduced: npt.NDArray[np.uint8], kernel: int) -> npt.NDArray[np.float32]:
    """Estimate the paper grey level over a reduced page (`shrink_by`).

    Returns float32 of the same shape as ``reduced``. A closing (dilate,
    then erode) with a ``kernel`` square removes dark features narrower
    than the kernel but follows a shading ramp exactly, so a page
    darkening from 235 to 150 grey keeps its blank bubbles near fill 0.
    """
    return np.maximum(_closed_paper(reduced, kernel).astype(np.float32), 1.0)


def _closed_paper(reduced: npt.NDArray[np.uint8], kernel: int) -> npt.NDArray[np.uint8]:
    """Return the closed and 3 x 3 smoothed page that `paper_map` converts."""
    element = cv2.getStructuringElement(cv2.MORPH_RECT, (kernel, kernel))
    closed = cv2.morphologyEx(reduced, cv2.MORPH_CLOSE, element)
    return np.asarray(cv2.blur(closed, (3, 3)), dtype=np.uint8)


def _bubble_paper(
    reduced: npt.NDArray[np.uint8], geometry: _Geometry
) -> npt.NDArray[np.float32]:
    """Return `paper_map` at each bubble centre, shape (n_bubbles,).

    Converting only the bubble centres' pixels gives the same values as
    indexing the whole float32 map, without building it.
    """
    closed = _closed_paper(reduced, geometry.paper_kernel)
    return np.maximum(closed.ravel()[geometry.paper_index].astype(np.float32), 1.0)


def _bubble_shifts(
    toned: npt.NDArray[np.uint8], template: Template, geometry: _Geometry
) -> npt.NDArray[np.intp] | None:
    """Return each bubble's (dx, dy) in image px, or None when none moves."""
    search = geometry.shift_search
    if search is None:
        return None
    layout = field_layout(template)
    shifts = find_block_shifts(shrink_by(toned, search.scale), layout, search)
    if not shifts.any():
        return None
    return np.asarray(shifts[layout.bubble_block], dtype=np.intp)


def _sample_index(
    toned: npt.NDArray[np.uint8], template: Template, geometry: _Geometry
) -> npt.NDArray[np.intp]:
    """Return the flat sample indices, moved by each block's best shift."""
    offset = _bubble_shifts(toned, template, geometry)
    if offset is None:
        return geometry.sample_index
    return _shifted_index(geometry, offset)


def _shifted_index(
    geometry: _Geometry, offset: npt.NDArray[np.intp]
) -> npt.NDArray[np.intp]:
    """Return the flat sample indices moved by (dx, dy) per bubble.

    ``offset`` is (n_bubbles, 2) in image px. A sample moved off the page
    is clipped to its edge.
    """
    if _shifts_stay_inside(geometry, offset):
        # Without clipping, (y + dy) * width + x + dx is the flat index
        # plus one offset per bubble: one addition instead of five passes.
        flat_offset = offset[:, 1] * geometry.width + offset[:, 0]
        return np.asarray(geometry.sample_index + flat_offset[:, None], np.intp)
    px = np.clip(geometry.sample_x + offset[:, 0:1], 0, geometry.width - 1)
    py = np.clip(geometry.sample_y + offset[:, 1:2], 0, geometry.height - 1)
    return np.asarray(py * geometry.width + px, dtype=np.intp)


def _shifts_stay_inside(geometry: _Geometry, offset: npt.NDArray[np.intp]) -> bool:
    """Return True when no shifted sample falls outside the page."""
    x_range = geometry.sample_x_range + offset[:, 0:1]
    y_range = geometry.sample_y_range + offset[:, 1:2]
    return bool(
        x_range[:, 0].min() >= 0
        and x_range[:, 1].max() <= geometry.width - 1
        and y_range[:, 0].min() >= 0
        and y_range[:, 1].max() <= geometry.height - 1
    )


def measure_fills(
    image: npt.NDArray[np.uint8],
    template: Template,
    measurement: MeasurementSettings,
) -> npt.NDArray[np.float32]:
    """Measure every bubble's fill on an aligned grey page.

    ``image`` is uint8 of shape (page_height, page_width), or of shape
    (page_height // 2, page_width // 2) as `load_sheet_for_measuring`
    returns for a reduced decode; bubble positions are scaled to match.
    Returns float32 of shape (n_bubbles,) in the order of
    ``template.fields`` and their bubbles: 0 is paper, 1 is solid ink.
    Safe to call from several threads.

    Raises:
        ValueError: The image has neither the page shape nor half of it.
    """
    page = (template.page_height, template.page_width)
    half = (template.page_height // 2, template.page_width // 2)
    if image.dtype != np.uint8 or image.shape not in (page, half):
        raise ValueError(
            f"image must be uint8 of shape {page} or {half}, "
            f"got {image.dtype} {image.shape}"
        )
    geometry = _geometry(template, measurement, 1 if image.shape == page else 2)
    toned = apply_tone(image, effective_tone(template, measurement))
    reduced = shrink_by(toned, geometry.paper_scale)
    bubble_paper = _bubble_paper(reduced, geometry)
    kth = int(measurement.fill_quantile * (geometry.sample_index.shape[1] - 1))

    compiled = kernels.compiled
    if compiled is not None:
        offset = _bubble_shifts(toned, template, geometry)
        return _compiled_fills(compiled, toned, geometry, offset, bubble_paper, kth)
    kernels.report_numpy_path()
    index = _sample_index(toned, template, geometry)
    # The order statistic is the same in int32. numpy 2.4 partitions 32-bit
    # integers with SIMD code on AVX2 and AVX-512 CPUs; 16-bit ones only
    # on AVX-512. For 850 x 80 samples on an AVX2 x86_64 CPU (AMD EPYC,
    # family 25) int32 took 0.14 ms, int16 and uint8 0.49 ms. The speed
    # depends on the CPU, the result does not.
    samples = toned.ravel()[index].astype(np.int32)
    grey = np.partition(samples, kth, axis=1)[:, kth].astype(np.float32)
    fills = 1.0 - grey / bubble_paper
    return np.asarray(np.clip(fills, 0.0, 1.0), dtype=np.float32)


def _compiled_fills(
    compiled: types.ModuleType,
    toned: npt.NDArray[np.uint8],
    geometry: _Geometry,
    offset: npt.NDArray[np.intp] | None,
    bubble_paper: npt.NDArray[np.float32],
    kth: int,
) -> npt.NDArray[np.float32]:
    """Return what `measure_fills` returns, sampled by the compiled kernel.

    The kernel reads each sample at its bubble's grid column and row moved
    by the bubble's shift, takes the ``kth`` smallest grey of each bubble,
    and converts it to a fill with float32 arithmetic as the numpy path
    does. ``offset`` is (n_bubbles, 2) or None for no shift.
    """
    shift = (
        geometry.no_shift if offset is None else np.ascontiguousarray(offset, np.int64)
    )
    fills = np.empty(geometry.sample_index.shape[0], dtype=np.float32)
    compiled.bubble_fills(
        *bubble_fills_arguments(toned, geometry, shift, bubble_paper, kth, fills)
    )
    return fills


def bubble_fills_arguments(
    toned: npt.NDArray[np.uint8],
    geometry: _Geometry,
    shift: npt.NDArray[np.int64],
    bubble_paper: npt.NDArray[np.float32],
    kth: int,
    out: npt.NDArray[np.float32],
) -> list[object]:
    """Return the arguments of the kernel's ``bubble_fills``, in its order.

    ``shift`` is (n_bubbles, 2) int64 and ``out`` receives the fills. The
    tests build their malformed calls from this list.
    """
    n_bubbles, n_samples = geometry.sample_index.shape
    return [
        np.ascontiguousarray(toned, dtype=np.uint8),
        geometry.width,
        geometry.height,
        geometry.grid_x,
        geometry.grid_y,
        geometry.grid_x.shape[1],
        geometry.grid_column,
        geometry.grid_row,
        shift,
        np.ascontiguousarray(bubble_paper, dtype=np.float32),
        kth,
        out,
        n_bubbles,
        n_samples,
    ]
