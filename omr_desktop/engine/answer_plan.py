"""Per-template tables that turn per-field decisions into answer strings.

`decide` runs once per sheet, and most of what it needs besides the fills
depends on the template alone: which fields make up each output column,
where each field's fills start, the bubble values that a set of marks
spells. `answer_plan` builds these once per template and caches them on
it, so that a sheet costs one lookup per field instead of a loop over its
bubbles.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from omr_desktop.engine.layout import field_layout
from omr_desktop.engine.template import FieldKind, Template

_CACHE_ATTR = "_answer_plan_cache"
_lock = threading.Lock()

# A field's marks are looked up as a bit mask in an int64, one bit per
# bubble. Bits 0-62 keep the mask positive, so fields of up to 63 bubbles
# use the lookup and wider ones the loop over their bubbles.
_MAX_MASK_BUBBLES = 63
# Spelled mark sets kept per distinct value sequence. A 10-digit field has
# 1024 possible sets. A field of many bubbles, marked in ever new ways,
# would grow its table without bound, so it stops at this size.
_MAX_CACHED_SPELLINGS = 4096


@dataclass(frozen=True)
class ColumnPlan:
    """The fields behind one output column.

    Attributes:
        name: Output column name.
        members: Field indices in ``template.fields``, in column order.
        field: The first member, the only one of a one-field column.
        fill_start: Index of the column's first fill, for a one-field
            column; the column's fills are ``fills[fill_start:fill_end]``.
        fill_end: One past the column's last fill, for a one-field column.
    """

    name: str
    members: tuple[int, ...]
    field: int
    fill_start: int
    fill_end: int


@dataclass(frozen=True)
class AnswerPlan:
    """Template-only inputs of `omr_desktop.engine.decide.decide`.

    Attributes:
        n_bubbles: Bubbles over all fields.
        is_question: bool (n_fields,), the field is a question.
        block_one_hot: bool (n_fields, n_blocks), the field's block.
        questions_per_block: int (n_blocks,), question fields per block.
        field_starts: n_fields + 1 fill indices; field i's fills are
            ``fills[field_starts[i]:field_starts[i + 1]]``.
        empties: Each field's empty value.
        values: Each field's bubble values, in bubble order.
        bit_weights: int64 (max_bubbles,), ``1 << j`` for bubble j, or
            None when a field is too wide for a bit mask.
        spellings: Per field, the shared table from a mark mask to the
            marked values joined; fields with equal values share one.
        questions: One plan per question output column, in output order.
        identifiers: One plan per identifier output column, in output order.
        question_names: The question columns' names, in output order.
        question_fill_counts: Fills per question column.
        question_empties: Each question column's empty value.
        single_fields: The field of each question column, as an index
            array and as a function that picks those items of a per-field
            sequence into a tuple. None when some column joins several
            fields.
        question_fill_index: Indices in the fills array of every question
            column's fills, column after column. None when
            ``single_fields`` is None.
    """

    n_bubbles: int
    is_question: npt.NDArray[np.bool_]
    block_one_hot: npt.NDArray[np.bool_]
    questions_per_block: npt.NDArray[np.intp]
    field_starts: tuple[int, ...]
    empties: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]
    bit_weights: npt.NDArray[np.int64] | None
    spellings: tuple[dict[int, str], ...]
    questions: tuple[ColumnPlan, ...]
    identifiers: tuple[ColumnPlan, ...]
    question_names: tuple[str, ...]
    question_fill_counts: tuple[int, ...]
    question_empties: tuple[str, ...]
    single_fields: SingleFields | None
    question_fill_index: npt.NDArray[np.intp] | None


@dataclass(frozen=True)
class SingleFields:
    """The field of each question column, when every column has one field.

    Attributes:
        index: intp (n_question_columns,), each column's field.
        pick: A function that returns the items of a per-field sequence
            at ``index`` as a tuple, in C (`operator.itemgetter`).
    """

    index: npt.NDArray[np.intp]
    pick: Callable[[Sequence[object]], tuple[object, ...]]


def _picker(index: list[int]) -> Callable[[Sequence[object]], tuple[object, ...]]:
    """Return a function that picks ``index`` of a sequence into a tuple."""
    if not index:
        return lambda items: ()
    if len(index) == 1:
        # itemgetter of one index returns the item itself, not a tuple.
        only = index[0]
        return lambda items: (items[only],)
    return cast(
        Callable[[Sequence[object]], tuple[object, ...]], operator.itemgetter(*index)
    )


def answer_plan(template: Template) -> AnswerPlan:
    """Return the template's cached `AnswerPlan`, building it on first use."""
    plan: AnswerPlan | None = template.__dict__.get(_CACHE_ATTR)
    if plan is None:
        with _lock:
            plan = template.__dict__.get(_CACHE_ATTR)
            if plan is None:
                plan = _build(template)
                template.__dict__[_CACHE_ATTR] = plan
    return plan


def _build(template: Template) -> AnswerPlan:
    layout = field_layout(template)
    n_blocks = len(layout.block_names)
    one_hot = layout.field_block[:, None] == np.arange(n_blocks)[None, :]
    is_question = np.array([f.kind is FieldKind.QUESTION for f in template.fields])
    starts = np.concatenate([[0], np.cumsum(layout.counts)]).tolist()
    values = tuple(tuple(b.value for b in f.bubbles) for f in template.fields)
    shared: dict[tuple[str, ...], dict[int, str]] = {}
    width = layout.valid.shape[1]
    weights = None
    if width <= _MAX_MASK_BUBBLES:
        weights = np.left_shift(np.int64(1), np.arange(width, dtype=np.int64))
    position = template.field_positions
    questions = _columns(template, template.question_columns, position, starts)
    single = None
    fill_index = None
    if all(len(col.members) == 1 for col in questions):
        fields = [col.field for col in questions]
        single = SingleFields(np.array(fields, dtype=np.intp), _picker(fields))
        fill_index = np.array(
            [i for col in questions for i in range(col.fill_start, col.fill_end)],
            dtype=np.intp,
        )
    return AnswerPlan(
        n_bubbles=int(layout.counts.sum()),
        is_question=is_question,
        block_one_hot=one_hot,
        questions_per_block=(one_hot & is_question[:, None]).sum(axis=0),
        field_starts=tuple(starts),
        empties=tuple(f.empty_value for f in template.fields),
        values=values,
        bit_weights=weights,
        spellings=tuple(shared.setdefault(v, {}) for v in values),
        questions=questions,
        identifiers=_columns(template, template.identifier_columns, position, starts),
        question_names=tuple(col.name for col in questions),
        question_fill_counts=tuple(
            sum(starts[i + 1] - starts[i] for i in col.members) for col in questions
        ),
        question_empties=tuple(
            template.fields[col.field].empty_value if len(col.members) == 1 else ""
            for col in questions
        ),
        single_fields=single,
        question_fill_index=fill_index,
    )


def _columns(
    template: Template,
    columns: tuple[str, ...],
    position: Mapping[str, int],
    starts: list[int],
) -> tuple[ColumnPlan, ...]:
    plans = []
    for column in columns:
        members = tuple(position[label] for label in template.column_fields(column))
        first = members[0]
        plans.append(
            ColumnPlan(column, members, first, starts[first], starts[first + 1])
        )
    return tuple(plans)


def spell_marks(plan: AnswerPlan, marked: npt.NDArray[np.bool_]) -> list[str]:
    """Return each field's marked values joined in bubble order.

    ``marked`` is bool (n_fields, max_bubbles) and False on padding, as
    `omr_desktop.engine.layout.FieldLayout` pads. Each distinct set of
    marks of a value sequence is spelled once and then looked up.
    """
    if plan.bit_weights is None:
        return [_spell(v, row) for v, row in zip(plan.values, marked, strict=True)]
    masks = (marked * plan.bit_weights).sum(axis=1).tolist()
    spelled = [table.get(m) for table, m in zip(plan.spellings, masks, strict=True)]
    if None in spelled:
        spelled = [
            _spell_and_keep(plan, i, masks[i]) if text is None else text
            for i, text in enumerate(spelled)
        ]
    return cast(list[str], spelled)


def _spell_and_keep(plan: AnswerPlan, field: int, mask: int) -> str:
    values = plan.values[field]
    text = "".join(v for j, v in enumerate(values) if mask >> j & 1)
    table = plan.spellings[field]
    # Two threads may spell the same set at once; both store the same text.
    if len(table) < _MAX_CACHED_SPELLINGS:
        table[mask] = text
    return text


def _spell(values: tuple[str, ...], row: npt.NDArray[np.bool_]) -> str:
    return "".join(v for v, hit in zip(values, row.tolist(), strict=False) if hit)
