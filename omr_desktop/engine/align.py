"""Find a small per-block shift that puts the template's boxes on the marks.

Template coordinates are often a few pixels off the printed bubbles, and a
scan can be shifted by a few pixels more. On OMRChecker's Sandeep-1507
sample omr-3 the boxes miss by about half a bubble near the bottom.

For each block, every shift within the search range gets a score: the sum
over fields of (field mean grey - darkest bubble's grey), from box means
over one integral image. The best shift is kept when it beats no shift
clearly. A blank block has no contrast to gain and stays where it is.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from omr_desktop.engine import kernels
from omr_desktop.engine.layout import FieldLayout

# A shift must raise the block's contrast by this fraction over no shift.
# A smaller gain is noise, and moving would only risk neighbour bubbles.
_MIN_GAIN = 0.01
# A block moves only when its fields stand out by this many grey levels
# each on average (mean minus darkest) before the move. A blank block
# measures 1-3 (noise, printed letters), a marked one 50 or more, and
# without this floor a blank block drifts onto its printed outlines.
_MIN_FIELD_CONTRAST = 12.0
# Reduced bubbles for the paper level are at least this many pixels across
# (3.5-7 px, because the scale is rounded down). The paper level is smooth
# over several bubbles, so a coarser page loses nothing it needs. On a demo
# sheet the closing takes 0.28 ms at 3.5 px and 0.84 ms at 7 px. The paper
# levels differ by at most 3 grey levels, the real samples read the same,
# and the accuracy suite keeps every read rate.
_REDUCED_BUBBLE_PX = 3.5
# The shift search keeps bubbles of this many pixels or more, so it places
# a box to within one pixel of the measured image.
_SEARCH_BUBBLE_PX = 12


@dataclass(frozen=True)
class FieldRun:
    """Consecutive fields with the same number of bubbles.

    A field's bubbles follow each other in template order, so the bubbles
    of a run are one slice of the means and reshape to (fields, bubbles).
    """

    first_bubble: int
    first_field: int
    fields: int
    bubbles: int


@dataclass(frozen=True)
class ShiftSearch:
    """Precomputed candidate shifts for one template.

    Attributes:
        scale: Page px per reduced px.
        shifts: (n_shifts, 2) int, candidate (dx, dy) in reduced px; row 0
            is (0, 0).
        coarse: Rows of ``shifts`` tried first: every third step, with
            (0, 0) as the first row.
        window: (top, bottom, left, right) of the part of the reduced
            image whose integral the search reads: every box at every
            candidate shift lies inside it. It is the whole image when a
            box can reach the image's edge.
        corner_index: (4, n_bubbles) int, flat indices of each box's
            top-left, top-right, bottom-left and bottom-right corners in
            the window's integral image.
        coarse_index: (4, n_bubbles, n_coarse) int, ``corner_index`` moved
            by every coarse shift, clipped to the integral image. The
            coarse shifts are the same for every sheet.
        coarse_allowed: (n_blocks, n_coarse) bool, coarse shifts within
            each block's limit.
        coarse_offsets: (n_blocks, n_coarse) int64, the flat offset of each
            coarse shift in the integral image, one row per block, for the
            compiled kernel.
        field_starts: (n_fields + 1,) int64, each field's first bubble.
        field_block: (n_fields,) int64, each field's block.
        clip: True when a shifted index can leave the integral image,
            which only happens when the window is the whole image.
        area: (n_bubbles,) float, pixels per box.
        stride: Row length of the window's integral image.
        limit: (n_blocks,) int, the largest shift allowed per block.
        min_contrast: (n_blocks,) float, the score below which a block
            counts as blank and stays in place.
        runs: The template's fields as runs of equal bubble counts.
        block_order: (n_fields,) int, the fields sorted by block, in
            template order within a block.
        block_starts: (n_blocks,) int, where each block's fields start in
            ``block_order``. Every block has at least one field.
    """

    scale: int
    shifts: npt.NDArray[np.intp]
    coarse: npt.NDArray[np.intp]
    window: tuple[int, int, int, int]
    corner_index: npt.NDArray[np.intp]
    coarse_index: npt.NDArray[np.intp]
    coarse_allowed: npt.NDArray[np.bool_]
    coarse_offsets: npt.NDArray[np.int64]
    field_starts: npt.NDArray[np.int64]
    field_block: npt.NDArray[np.int64]
    clip: bool
    area: npt.NDArray[np.float64]
    stride: int
    limit: npt.NDArray[np.intp]
    min_contrast: npt.NDArray[np.float64]
    runs: tuple[FieldRun, ...]
    block_order: npt.NDArray[np.intp]
    block_starts: npt.NDArray[np.intp]


def reduced_scale(bubble_px: float) -> int:
    """Return the image px per paper-map px for bubbles of ``bubble_px``."""
    return max(1, int(bubble_px // _REDUCED_BUBBLE_PX))


def _block_spacing(
    layout: FieldLayout, boxes: npt.NDArray[np.float64], block: int
) -> float:
    """Return the smallest centre distance between bubbles of one block, px."""
    members = np.flatnonzero(layout.bubble_block == block)
    centres = boxes[members, :2] + boxes[members, 2:] / 2.0
    if len(centres) < 2:
        return float(boxes[members, 2:].max()) * 2.0
    # Neighbours in template order are the nearest along a field; the gap
    # to the next field is checked by sorting on each axis.
    gaps = [np.abs(np.diff(np.sort(centres[:, axis]))) for axis in (0, 1)]
    positive = np.concatenate([g[g > 0.5] for g in gaps])
    return float(positive.min()) if positive.size else float(boxes[:, 2].max())


def build_shift_search(
    layout: FieldLayout,
    search: float,
    image_shape: tuple[int, int],
    image_scale: int = 1,
    inset: float = 1.0,
) -> ShiftSearch:
    """Prepare the search for shifts up to ``search`` bubble sizes.

    ``image_shape`` is (height, width) of the image measured, which is the
    page divided by ``image_scale``. Each block's limit is also kept under
    0.3 of its bubble spacing, so a box never reaches the next bubble.
    Boxes are the central ``inset`` of each bubble rectangle, so that the
    printed outline weighs little in the score.
    """
    boxes = layout.boxes / image_scale
    bubble_px = float(np.median(boxes[:, 2:].max(axis=1)))
    scale = max(1, int(bubble_px // _SEARCH_BUBBLE_PX))
    n_blocks = len(layout.block_names)
    limit_px = [
        min(search * bubble_px, 0.3 * _block_spacing(layout, boxes, b))
        for b in range(n_blocks)
    ]
    limit = np.array([int(v // scale) for v in limit_px], dtype=np.intp)
    radius = int(limit.max()) if n_blocks else 0
    steps = np.arange(-radius, radius + 1)
    dx, dy = np.meshgrid(steps, steps)
    order = np.argsort(np.abs(dx).ravel() + np.abs(dy).ravel(), kind="stable")
    shifts = np.stack([dx.ravel()[order], dy.ravel()[order]], axis=1).astype(np.intp)
    # Every third step, so that the eight neighbours of the best coarse
    # shift cover every shift between coarse ones.
    on_grid = (shifts % 3 == 0).all(axis=1)
    coarse = np.flatnonzero(on_grid).astype(np.intp)

    x, y, w, h = (boxes / scale).T
    x, y = x + w * (1 - inset) / 2, y + h * (1 - inset) / 2
    w, h = w * inset, h * inset
    height, width = -(-image_shape[0] // scale), -(-image_shape[1] // scale)
    corners = np.stack(
        [
            np.clip(np.round(x), 0, width - 1),
            np.clip(np.round(y), 0, height - 1),
            np.clip(np.round(x + w), 1, width),
            np.clip(np.round(y + h), 1, height),
        ],
        axis=1,
    ).astype(np.intp)
    window = _window(corners, radius + 1, height, width)
    top, _, left, right = window
    x1, y1, x2, y2 = (corners - [left, top, left, top]).T
    stride = right - left + 1  # the integral image has one more column
    corner_index = np.stack(
        [y1 * stride + x1, y1 * stride + x2, y2 * stride + x1, y2 * stride + x2]
    ).astype(np.intp)
    area = ((x2 - x1) * (y2 - y1)).astype(np.float64)
    fields = np.bincount(layout.field_block, minlength=n_blocks)
    floor = _MIN_FIELD_CONTRAST * fields.astype(np.float64)
    block_order = np.argsort(layout.field_block, kind="stable").astype(np.intp)
    block_starts = np.concatenate([[0], np.cumsum(fields)[:-1]]).astype(np.intp)

    clip = window == (0, height, 0, width)
    coarse_shifts = shifts[coarse]
    coarse_offsets = coarse_shifts[:, 1] * stride + coarse_shifts[:, 0]
    coarse_index = corner_index[:, :, None] + coarse_offsets[None, None, :]
    integral_size = (window[1] - top + 1) * stride
    if clip:
        np.clip(coarse_index, 0, integral_size - 1, out=coarse_index)
    reach = np.abs(coarse_shifts).max(axis=1)
    return ShiftSearch(
        scale=scale,
        shifts=shifts,
        coarse=coarse,
        window=window,
        corner_index=np.ascontiguousarray(corner_index, dtype=np.int64),
        coarse_index=coarse_index.astype(np.intp),
        coarse_allowed=reach[None, :] <= limit[:, None],
        coarse_offsets=np.ascontiguousarray(
            np.broadcast_to(coarse_offsets, (n_blocks, len(coarse))), dtype=np.int64
        ),
        field_starts=np.concatenate([[0], np.cumsum(layout.counts)]).astype(np.int64),
        field_block=np.asarray(layout.field_block, dtype=np.int64),
        clip=clip,
        area=area,
        stride=stride,
        limit=limit,
        min_contrast=floor,
        runs=_field_runs(layout),
        block_order=block_order,
        block_starts=block_starts,
    )


def _window(
    corners: npt.NDArray[np.intp], margin: int, height: int, width: int
) -> tuple[int, int, int, int]:
    """Return (top, bottom, left, right) around every box moved by ``margin``.

    Returns the whole image when that area would cross an edge, so that a
    box pushed over the edge reads the clipped corners it always read.
    """
    top = int(corners[:, 1].min()) - margin
    bottom = int(corners[:, 3].max()) + margin
    left = int(corners[:, 0].min()) - margin
    right = int(corners[:, 2].max()) + margin
    if top < 0 or left < 0 or bottom > height or right > width:
        return (0, height, 0, width)
    return (top, bottom, left, right)


def _field_runs(layout: FieldLayout) -> tuple[FieldRun, ...]:
    """Split the fields into runs of consecutive fields of equal size."""
    runs: list[FieldRun] = []
    first_bubble = 0
    for field_number, count in enumerate(layout.counts.tolist()):
        last = runs[-1] if runs else None
        if last is not None and last.bubbles == count:
            runs[-1] = FieldRun(
                last.first_bubble, last.first_field, last.fields + 1, count
            )
        else:
            runs.append(FieldRun(first_bubble, field_number, 1, count))
        first_bubble += count
    return tuple(runs)


def find_block_shifts(
    reduced: npt.NDArray[np.uint8], layout: FieldLayout, search: ShiftSearch
) -> npt.NDArray[np.intp]:
    """Return the best (dx, dy) per block in page px, shape (n_blocks, 2).

    ``reduced`` is the toned image after `shrink_by` with ``search.scale``.
    The search runs coarse to fine: every third shift first, then the
    eight neighbours of each block's best coarse shift.
    """
    n_blocks = len(layout.block_names)
    if search.shifts.shape[0] == 1:
        return np.zeros((n_blocks, 2), dtype=np.intp)
    top, bottom, left, right = search.window
    window = reduced[top:bottom, left:right]
    integral = np.asarray(cv2.integral(window), dtype=np.int32).ravel()
    blocks = np.arange(n_blocks)

    # Scores are (n_blocks, n_shifts).
    score = np.where(search.coarse_allowed, _coarse_contrast(integral, search), -np.inf)
    base = score[:, 0]  # the first coarse shift is no shift
    best = search.shifts[search.coarse[np.argmax(score, axis=1)]]  # (n_blocks, 2)

    candidates = best[:, None, :] + _NEIGHBOURS[None, :, :]  # (n_blocks, 9, 2)
    fine = _scores(integral, search, layout, candidates)
    fine_best = np.argmax(fine, axis=1)
    chosen = candidates[blocks, fine_best]
    gain = fine[blocks, fine_best] - base
    keep = (gain > _MIN_GAIN * np.maximum(base, 1.0)) & (
        np.maximum(base, fine[blocks, fine_best]) >= search.min_contrast
    )
    return np.where(keep[:, None], chosen, 0) * search.scale


_NEIGHBOURS = np.array(
    [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dtype=np.intp
)


def _scores(
    integral: npt.NDArray[np.int32],
    search: ShiftSearch,
    layout: FieldLayout,
    shifts: npt.NDArray[np.intp],
) -> npt.NDArray[np.float64]:
    """Score per-block shifts (n_blocks, n_shifts, 2); -inf beyond a limit."""
    offsets = shifts[..., 1] * search.stride + shifts[..., 0]  # (n_blocks, n_shifts)
    compiled = kernels.compiled
    if compiled is not None:
        score = _compiled_contrast(compiled, integral, search, offsets)
    else:
        index = search.corner_index[:, :, None] + offsets[layout.bubble_block][None]
        if search.clip and _reaches_outside(index, integral.size):
            np.clip(index, 0, integral.size - 1, out=index)
        score = _block_contrast(_box_means(integral, search, index), search)
    reach = np.abs(shifts).max(axis=2)  # (n_blocks, n_shifts)
    return np.where(reach <= search.limit[:, None], score, -np.inf)


def _coarse_contrast(
    integral: npt.NDArray[np.int32], search: ShiftSearch
) -> npt.NDArray[np.float64]:
    """Return `_block_contrast` at every coarse shift, (n_blocks, n_coarse)."""
    compiled = kernels.compiled
    if compiled is not None:
        return _compiled_contrast(compiled, integral, search, search.coarse_offsets)
    means = _box_means(integral, search, search.coarse_index)
    return _block_contrast(means, search)


def _compiled_contrast(
    compiled: types.ModuleType,
    integral: npt.NDArray[np.int32],
    search: ShiftSearch,
    offsets: npt.NDArray[np.intp],
) -> npt.NDArray[np.float64]:
    """Return `_block_contrast` for flat shift offsets (n_blocks, n_shifts).

    The compiled kernel reads each box's four corners straight from the
    integral image, where the numpy path first builds (4, n_bubbles,
    n_shifts) indices, and returns each field's contrast as
    `_run_contrast` computes it. A corner moved outside the integral image
    is clipped to it, as the numpy path clips when ``search.clip`` is set.
    Without ``search.clip`` the search window keeps every corner inside.
    The block sums are `_sum_blocks`, the same numpy reduction for both
    paths, so that both add in the same order and tie the same way.
    """
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    n_shifts = offsets.shape[1]
    contrast = np.empty((len(search.block_order), n_shifts), dtype=np.float64)
    compiled.field_contrasts(
        np.ascontiguousarray(integral, dtype=np.int32),
        search.corner_index,
        offsets,
        search.area,
        search.field_starts,
        search.field_block,
        contrast,
        search.area.size,
        search.field_block.size,
        offsets.shape[0],
        n_shifts,
    )
    return _sum_blocks(contrast, search)


def _box_means(
    integral: npt.NDArray[np.int32],
    search: ShiftSearch,
    index: npt.NDArray[np.intp],
) -> npt.NDArray[np.float64]:
    """Return mean grey of every shifted box, shape (n_bubbles, n_shifts).

    ``integral`` is the flattened integral image of the search window and
    ``index`` (4, n_bubbles, n_shifts) the flat indices of the shifted
    boxes' corners, each bubble's shifts next to each other so that the
    gather reads one neighbourhood at a time. A box pushed over the left
    or right edge of the whole image wraps into the next row, which only
    matters for bubbles within the search limit of the page edge.
    """
    top_left, top_right, bottom_left, bottom_right = integral[index]
    # The box sums are exact in int32, because each difference of two
    # corners in one column lies between 0 and the largest integral value.
    # Dividing them gives the same means as summing in float64 would.
    total = (bottom_right - top_right) - (bottom_left - top_left)
    return np.asarray(total / search.area[:, None], dtype=np.float64)


def _reaches_outside(index: npt.NDArray[np.intp], size: int) -> bool:
    """Return True when a corner index falls outside the integral image."""
    return int(index.min()) < 0 or int(index.max()) > size - 1


def _block_contrast(
    means: npt.NDArray[np.float64], search: ShiftSearch
) -> npt.NDArray[np.float64]:
    """Sum per block of (field mean - field minimum), shape (n_blocks, n_shifts).

    ``means`` is (n_bubbles, n_shifts). Each run of equal fields is one
    (fields, bubbles, shifts) view, reduced one bubble position at a time
    over whole (fields, shifts) slices. A reduction over a short last axis
    took about six times as long, and a gather into a padded
    (fields, max_bubbles) matrix about three and a half times.
    """
    contrast = np.empty((len(search.block_order), means.shape[1]), dtype=np.float64)
    for run in search.runs:
        fields = slice(run.first_field, run.first_field + run.fields)
        _run_contrast(means, run, contrast[fields])
    return _sum_blocks(contrast, search)


def _sum_blocks(
    contrast: npt.NDArray[np.float64], search: ShiftSearch
) -> npt.NDArray[np.float64]:
    """Sum field contrasts (n_fields, n_shifts) per block, (n_blocks, n_shifts)."""
    # Summed per block without BLAS. A matrix product with one-hot block
    # weights ran in OpenBLAS, whose threads keep spinning for a while
    # after each call and took CPU from the detection threads: in one run
    # read_sheet + encode on 2 threads took 1.71 times the decode alone,
    # and 1.41 times with OPENBLAS_NUM_THREADS=1.
    return np.add.reduceat(contrast[search.block_order], search.block_starts, axis=0)


def _run_contrast(
    means: npt.NDArray[np.float64],
    run: FieldRun,
    out: npt.NDArray[np.float64],
) -> None:
    """Write (field mean - field minimum) of one run's fields into ``out``."""
    end = run.first_bubble + run.fields * run.bubbles
    grid = means[run.first_bubble : end].reshape(run.fields, run.bubbles, -1)
    total = grid[:, 0].copy()
    lowest = grid[:, 0].copy()
    for k in range(1, run.bubbles):
        total += grid[:, k]
        np.minimum(lowest, grid[:, k], out=lowest)
    np.subtract(total / run.bubbles, lowest, out=out)
