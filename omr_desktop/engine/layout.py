"""Array views of a template's fields, for vectorised measuring and deciding.

`field_layout` pads every field to the widest field's bubble count, so
per-field work (background, marks, confidence) runs as numpy operations
over an (n_fields, max_bubbles) matrix instead of a Python loop. The
layout is built once per template and cached on it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from omr_desktop.engine.template import Template

_CACHE_ATTR = "_field_layout_cache"
_lock = threading.Lock()


@dataclass(frozen=True)
class FieldLayout:
    """Index arrays over a template's bubbles.

    Attributes:
        index: (n_fields, max_bubbles) int, the bubble's position in the
            fills array, or 0 where ``valid`` is False.
        valid: (n_fields, max_bubbles) bool, False for padding.
        counts: (n_fields,) int, bubbles per field.
        counts_int64: ``counts`` as int64, as the compiled kernels take it.
        field_block: (n_fields,) int, the block number of each field.
        bubble_block: (n_bubbles,) int, the block number of each bubble.
        boxes: (n_bubbles, 4) float64, x, y, width, height of each bubble.
        block_names: Block names by block number, in template order.
    """

    index: npt.NDArray[np.intp]
    valid: npt.NDArray[np.bool_]
    counts: npt.NDArray[np.intp]
    counts_int64: npt.NDArray[np.int64]
    field_block: npt.NDArray[np.intp]
    bubble_block: npt.NDArray[np.intp]
    boxes: npt.NDArray[np.float64]
    block_names: tuple[str, ...]


def _build(template: Template) -> FieldLayout:
    counts = np.array([len(f.bubbles) for f in template.fields], dtype=np.intp)
    width = int(counts.max())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    columns = np.arange(width)
    valid = columns[None, :] < counts[:, None]
    index = np.where(valid, starts[:, None] + columns[None, :], 0).astype(np.intp)

    names: list[str] = []
    for fld in template.fields:
        if fld.block not in names:
            names.append(fld.block)
    field_block = np.array([names.index(f.block) for f in template.fields], np.intp)
    boxes = np.array(
        [(b.x, b.y, b.width, b.height) for _, b in template.iter_bubbles()],
        dtype=np.float64,
    )
    return FieldLayout(
        index=index,
        valid=valid,
        counts=counts,
        counts_int64=counts.astype(np.int64),
        field_block=field_block,
        bubble_block=np.repeat(field_block, counts),
        boxes=boxes,
        block_names=tuple(names),
    )


def field_layout(template: Template) -> FieldLayout:
    """Return the template's cached `FieldLayout`, building it on first use."""
    layout: FieldLayout | None = template.__dict__.get(_CACHE_ATTR)
    if layout is None:
        with _lock:
            layout = template.__dict__.get(_CACHE_ATTR)
            if layout is None:
                layout = _build(template)
                template.__dict__[_CACHE_ATTR] = layout
    return layout
