"""Turn measured bubble fills into answers with a confidence and a reason.

`decide` needs only the fills, so a change of decision settings is applied
to stored fills without decoding images again (the re-decide path).

Per field, in numpy over all fields at once (`_FieldDecisions`):

- Background: the faintest bubble of the field, but no darker than the
  sheet's background plus `BACKGROUND_MARGIN`, so a field whose bubbles
  are all filled still reads as all filled. Fields of one or two bubbles
  have no useful faintest bubble (one bubble is its own minimum), so they
  fall back to the sheet-level background, the 25th percentile of all
  fills.
- A bubble is marked when its fill minus the background reaches
  ``min_fill``.
- Confidence is the smallest of the distances, each divided by its band
  and clipped to [0, 1]: faintest mark above ``min_fill``, darkest
  unmarked bubble below it, the jump between them above ``min_jump``, and
  for a multi-mark resolved to its darkest bubble, the gap above
  ``multi_mark_gap``. So 1.0 is far from every threshold and 0 is on one.

Reason codes, first match wins:

- ``multi_mark``: two or more bubbles marked.
- ``near_threshold``: a mark, or the jump between marks and blanks, lies
  within the uncertain band, so confidence is below the review threshold.
- ``light_mark``: a mark fainter than ``solid_fill``, or an unmarked
  bubble above the erasure band (a faint mark the profile left blank).
- ``near_threshold`` again: any other confidence below review.
- ``erased``: an unmarked bubble lies in the erasure band.
- ``clear``: one mark, nothing doubtful. ``blank``: no mark, nothing seen.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt

from omr_desktop.engine import kernels
from omr_desktop.engine.answer_plan import (
    AnswerPlan,
    ColumnPlan,
    answer_plan,
    spell_marks,
)
from omr_desktop.engine.layout import FieldLayout, field_layout
from omr_desktop.engine.profile import DecisionSettings
from omr_desktop.engine.template import Template

REASONS = ("clear", "light_mark", "multi_mark", "near_threshold", "erased", "blank")
MULTI_MARK_MARKER = "*"

# The sheet background is the 25th percentile of all fills: on a sheet with
# one mark in four or more bubbles per field it is a blank bubble's fill.
# Capped, so a sheet that is mostly marked still has a paper-like background.
_SHEET_BACKGROUND_QUANTILE = 0.25
_SHEET_BACKGROUND_CAP = 0.25
# A field's faintest bubble may sit this far above the sheet background
# (a tinted box, shading) and still count as that field's background.
BACKGROUND_MARGIN = 0.2
# Reasons by severity, used when several fields join into one column.
_SEVERITY = {
    r: i
    for i, r in enumerate(
        ("multi_mark", "near_threshold", "light_mark", "erased", "clear", "blank")
    )
}


class Answer(NamedTuple):
    """The reading of one question output column.

    A named tuple rather than a frozen dataclass, because a batch builds one
    per question of every sheet: 150 of them took about 300 us through the
    dataclass and about 70 us as tuples.

    Attributes:
        question: Output column name.
        answer_raw: Marked values joined in bubble order; "" for no mark.
        answer_corrected: The profile's reading: a multi-mark becomes its
            darkest value or ``*``; "" for no mark.
        confidence_score: 0 on a threshold, 1 far from every threshold.
        reason: One of `REASONS`.
        needs_review: Confidence below the review threshold, an unresolved
            multi-mark, or a question of an entirely blank block.
        fills: The column's bubble fills in bubble order.
        empty_value: What OMRChecker's CSV writes for an unmarked field.
    """

    question: str
    answer_raw: str
    answer_corrected: str
    confidence_score: float
    reason: str
    needs_review: bool
    fills: tuple[float, ...]
    empty_value: str = ""

    @property
    def output_value(self) -> str:
        """The raw answer as OMRChecker's results CSV writes it."""
        return self.answer_raw or self.empty_value


@dataclass(frozen=True, eq=False)
class AnswerColumns:
    """A sheet's answers column by column, one entry per question column.

    What `SheetReading.answers` is built from, in output order. The
    reprocess pipeline encodes these straight into COPY rows
    (`omr_desktop.pipeline.copy_rows.encode_answer_columns`): on a demo
    sheet, building 150 `Answer` tuples and taking them apart again cost
    about 0.2 ms of the 0.5 ms that deciding and encoding took.

    Attributes:
        questions: Output column names.
        answer_raw: Each column's `Answer.answer_raw`.
        answer_corrected: Each column's `Answer.answer_corrected`.
        confidence: float64, each column's `Answer.confidence_score`.
        reasons: Each column's `Answer.reason`.
        needs_review: Each column's `Answer.needs_review`.
        fills: float32, every column's fills, column after column.
        fill_counts: Fills per column.
        empty_values: Each column's `Answer.empty_value`.
    """

    questions: tuple[str, ...]
    answer_raw: tuple[str, ...]
    answer_corrected: tuple[str, ...]
    confidence: npt.NDArray[np.float64] = field(repr=False)
    reasons: tuple[str, ...]
    needs_review: tuple[bool, ...]
    fills: npt.NDArray[np.float32] = field(repr=False)
    fill_counts: tuple[int, ...]
    empty_values: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.questions)

    def answers(self) -> tuple[Answer, ...]:
        """Build the `Answer` of each column."""
        fills = self.fills.tolist()
        ends = itertools.accumulate(self.fill_counts)
        starts = itertools.chain((0,), itertools.accumulate(self.fill_counts))
        return tuple(
            _new_tuple(Answer, values)
            for values in zip(
                self.questions,
                self.answer_raw,
                self.answer_corrected,
                self.confidence.tolist(),
                self.reasons,
                self.needs_review,
                (tuple(fills[a:b]) for a, b in zip(starts, ends, strict=False)),
                self.empty_values,
                strict=True,
            )
        )

    @classmethod
    def from_answers(cls, answers: Sequence[Answer]) -> AnswerColumns:
        """Return the columns of ``answers``.

        Fills are stored as float32, as the engine measures them and the
        database stores them.
        """
        if not answers:
            empty: tuple[str, ...] = ()
            return cls(
                empty,
                empty,
                empty,
                np.zeros(0, np.float64),
                empty,
                (),
                np.zeros(0, np.float32),
                (),
                empty,
            )
        # Answer is a named tuple, so zip turns the rows into columns in C.
        questions, raws, corrected, confidences, reasons, reviews, fills, empties = zip(
            *answers, strict=True
        )
        counts = tuple(map(len, fills))
        return cls(
            questions=questions,
            answer_raw=raws,
            answer_corrected=corrected,
            confidence=np.fromiter(confidences, np.float64, len(answers)),
            reasons=reasons,
            needs_review=reviews,
            fills=np.fromiter(
                itertools.chain.from_iterable(fills), np.float32, sum(counts)
            ),
            fill_counts=counts,
            empty_values=empties,
        )


@dataclass(frozen=True, eq=False)
class SheetReading:
    """Everything read from one sheet.

    Attributes:
        columns: The answers column by column; `answers` builds one
            `Answer` per question output column from them on first use.
        identifiers: Identifier column to its value; an unmarked digit
            contributes its field's empty value, as in OMRChecker's CSV.
        blank_sheet: No bubble on the sheet is marked.
        fills: float32 (n_bubbles,), in template order.
        measurement_hash: Hash of the measurement settings behind ``fills``;
            "" when the fills came from elsewhere.
        blank_blocks: Names of question blocks with no mark at all.
        identifiers_in_doubt: Identifier columns with a multi-marked field.
        marked: bool (n_bubbles,), which bubbles this decision counted as
            marked, in template order.
    """

    columns: AnswerColumns
    identifiers: Mapping[str, str]
    blank_sheet: bool
    fills: npt.NDArray[np.float32] = field(repr=False)
    measurement_hash: str = ""
    blank_blocks: tuple[str, ...] = ()
    identifiers_in_doubt: tuple[str, ...] = ()
    marked: npt.NDArray[np.bool_] = field(
        default_factory=lambda: np.zeros(0, dtype=np.bool_), repr=False
    )

    @classmethod
    def with_answers(cls, answers: Sequence[Answer], **values: Any) -> SheetReading:
        """Return a reading of ``answers`` and the other attributes in ``values``.

        ``answers`` comes back unchanged from `answers`. A copy made with
        `dataclasses.replace` builds its answers again from the columns,
        so its fills are the float32 values, as the database stores them.
        """
        reading = cls(columns=AnswerColumns.from_answers(answers), **values)
        object.__setattr__(reading, "_answers", tuple(answers))
        return reading

    @property
    def answers(self) -> tuple[Answer, ...]:
        """One `Answer` per question output column, in output order."""
        built: tuple[Answer, ...] | None = self.__dict__.get("_answers")
        if built is None:
            # Two threads may build them at once; both store equal tuples.
            built = self.columns.answers()
            object.__setattr__(self, "_answers", built)
        return built

    def output_row(self) -> dict[str, str]:
        """Return column to value as in OMRChecker's results CSV."""
        row = dict(self.identifiers)
        row.update({a.question: a.output_value for a in self.answers})
        return row


@dataclass(frozen=True)
class _FieldDecisions:
    """Per-field arrays, shape (n_fields,) unless noted."""

    marked: npt.NDArray[np.bool_]  # (n_fields, max_bubbles)
    n_marked: npt.NDArray[np.intp]
    resolved: npt.NDArray[np.bool_]
    darkest: npt.NDArray[np.intp]
    confidence: npt.NDArray[np.float64]
    reason: npt.NDArray[np.str_]
    needs_review: npt.NDArray[np.bool_]


def sheet_background(fills: npt.NDArray[np.float32]) -> float:
    """Return the sheet-level background fill (see module docstring)."""
    if fills.size == 0:
        return 0.0
    level = _linear_quantile(fills, _SHEET_BACKGROUND_QUANTILE)
    return min(level, _SHEET_BACKGROUND_CAP)


def _linear_quantile(values: npt.NDArray[np.float32], q: float) -> float:
    """Return ``np.quantile(values, q)`` for a 1-D array.

    It runs the same partition and interpolation as numpy's default
    method and gives the same bits, except that a zero result may differ
    in its sign, which compares equal. For 850 fills it took about 5 us
    against numpy's 95 us, which go to handling every shape, method and
    weight numpy accepts. A test compares both on random arrays.
    """
    last = values.size - 1
    virtual = last * q
    below = math.floor(virtual)
    above = min(below + 1, last)
    ordered = np.partition(values, sorted({below, above, last}))
    if np.isnan(ordered[last]):
        return math.nan
    low, high = ordered[below], ordered[above]
    weight = virtual - below
    step = high - low
    level = high - step * (1 - weight) if weight >= 0.5 else low + step * weight
    return float(level)


def _relative_fills(
    fills: npt.NDArray[np.float32], layout: FieldLayout
) -> npt.NDArray[np.float64]:
    """Return fills minus each field's background, NaN for padding."""
    values = fills[layout.index].astype(np.float64)
    grid = np.where(layout.valid, values, np.nan)
    sheet_bg = sheet_background(fills)
    field_min = np.where(layout.valid, values, np.inf).min(axis=1)
    # With one or two bubbles the field minimum is no background, because a
    # single mark would be its own minimum. The sheet-level one is used.
    own = np.minimum(field_min, sheet_bg + BACKGROUND_MARGIN)
    background = np.where(layout.counts >= 3, own, sheet_bg)
    return grid - background[:, None]


def _unit(distance: npt.NDArray[np.float64], band: float) -> npt.NDArray[np.float64]:
    return np.clip(distance / band, 0.0, 1.0)


def _decide_fields(
    rel: npt.NDArray[np.float64], layout: FieldLayout, d: DecisionSettings
) -> _FieldDecisions:
    valid = layout.valid
    # NaN padding compares False, so it is never marked.
    marked = valid & (rel >= d.min_fill)
    n_marked = marked.sum(axis=1)
    unmarked = valid & ~marked
    has_mark, has_unmarked = n_marked > 0, unmarked.any(axis=1)
    weakest = np.where(marked, rel, np.inf).min(axis=1)
    strongest_blank = np.where(unmarked, rel, -np.inf).max(axis=1)

    ranked = np.sort(np.where(valid, rel, -np.inf), axis=1)
    gap = ranked[:, -1] - (ranked[:, -2] if ranked.shape[1] > 1 else -np.inf)
    darkest = np.argmax(np.where(valid, rel, -np.inf), axis=1)
    resolved = (
        (n_marked >= 2) & (gap >= d.multi_mark_gap) & (d.multi_mark_policy == "darkest")
    )

    c_mark = np.where(has_mark, _unit(weakest - d.min_fill, d.uncertain_above), 1.0)
    c_blank = np.where(
        has_unmarked, _unit(d.min_fill - strongest_blank, d.uncertain_below), 1.0
    )
    use_jump = has_mark & has_unmarked & (layout.counts >= 3)
    jump = np.where(use_jump, weakest - strongest_blank, np.inf)
    c_jump = np.where(use_jump, _unit(jump - d.min_jump, d.uncertain_above), 1.0)
    c_gap = np.where(resolved, _unit(gap - d.multi_mark_gap, d.uncertain_above), 1.0)
    confidence = np.minimum.reduce([c_mark, c_blank, c_jump, c_gap])

    low = confidence < d.review_threshold
    marked_side_low = np.minimum(c_mark, c_jump) < d.review_threshold
    light = has_mark & (weakest < d.solid_fill)
    faint = has_unmarked & (strongest_blank > d.erased_high)
    erased = has_unmarked & (strongest_blank >= d.erased_low) & ~faint
    # The first true condition names the reason; the last row is the default.
    conditions = np.stack(
        [n_marked >= 2, marked_side_low, light | faint, low, erased, has_mark]
    )
    reason = _REASON_BY_RULE[_first_true(conditions)]
    unresolved = (n_marked >= 2) & ~resolved
    return _FieldDecisions(
        marked=marked,
        n_marked=n_marked,
        resolved=resolved,
        darkest=darkest,
        confidence=confidence,
        reason=reason,
        needs_review=low | unresolved,
    )


def _compiled_decisions(
    fills: npt.NDArray[np.float32], layout: FieldLayout, d: DecisionSettings
) -> _FieldDecisions | None:
    """Return what `_decide_fields` returns, computed by the compiled kernel.

    None when the install has no kernels, or for inputs that would give
    NaN or infinity on the way (see ``decide_fields`` in ``_kernels.c``):
    the numpy path then decides. On
    the 160 fields of a demo sheet (one thread, warm caches) this took
    about 30 us, against about 250 us for the numpy calls.
    """
    compiled = kernels.compiled
    if compiled is None:
        return None
    n_fields, width = layout.valid.shape
    marked = np.empty((n_fields, width), dtype=np.bool_)
    n_marked = np.empty(n_fields, dtype=np.int64)
    resolved = np.empty(n_fields, dtype=np.bool_)
    darkest = np.empty(n_fields, dtype=np.int64)
    confidence = np.empty(n_fields, dtype=np.float64)
    rule = np.empty(n_fields, dtype=np.int64)
    needs_review = np.empty(n_fields, dtype=np.bool_)
    computed = compiled.decide_fields(
        np.ascontiguousarray(fills, dtype=np.float32),
        layout.counts_int64,
        width,
        sheet_background(fills),
        BACKGROUND_MARGIN,
        (
            d.min_fill,
            d.min_jump,
            d.multi_mark_gap,
            d.erased_low,
            d.erased_high,
            d.uncertain_below,
            d.uncertain_above,
            d.solid_fill,
            d.review_threshold,
        ),
        d.multi_mark_policy == "darkest",
        marked,
        n_marked,
        resolved,
        darkest,
        confidence,
        rule,
        needs_review,
        fills.size,
        n_fields,
    )
    if not computed:
        return None
    return _FieldDecisions(
        marked=marked,
        n_marked=n_marked,
        resolved=resolved,
        darkest=darkest,
        confidence=confidence,
        reason=_REASON_BY_RULE[rule],
        needs_review=needs_review,
    )


# Reasons in the order of the rules in `_decide_fields`, then the default.
_REASON_BY_RULE = np.array(
    ["multi_mark", "near_threshold", "light_mark", "near_threshold", "erased", "clear"]
    + ["blank"]
)


def _first_true(conditions: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """Return per column the first row that is True, or the row count if none."""
    rows = np.vstack([conditions, np.ones((1, conditions.shape[1]), dtype=np.bool_)])
    return np.asarray(rows.argmax(axis=0), dtype=np.intp)


def _blank_blocks(plan: AnswerPlan, fd: _FieldDecisions) -> npt.NDArray[np.bool_]:
    """Return per block whether every question field in it is blank."""
    seen = (fd.n_marked > 0) | (fd.reason == "light_mark")
    with_marks = (plan.block_one_hot & (plan.is_question & seen)[:, None]).sum(axis=0)
    return np.asarray(
        (plan.questions_per_block > 0) & (with_marks == 0), dtype=np.bool_
    )


def _field_strings(
    plan: AnswerPlan, fd: _FieldDecisions, policy: str
) -> tuple[list[str], list[str]]:
    """Return each field's raw and corrected answer strings."""
    raws = spell_marks(plan, fd.marked)
    corrected = list(raws)
    if policy == "all":
        return raws, corrected
    # Only a multi-mark reads differently once corrected, and most sheets
    # have none or a few.
    for i in np.flatnonzero(fd.n_marked >= 2).tolist():
        if fd.resolved[i]:
            corrected[i] = plan.values[i][fd.darkest[i]]
        else:
            corrected[i] = MULTI_MARK_MARKER
    return raws, corrected


def _join(parts: Sequence[str], empties: Sequence[str]) -> str:
    """Join a column's field strings; unmarked fields give their empty value."""
    if len(parts) == 1:
        return parts[0]
    if not any(parts):
        return ""
    return "".join(p or e for p, e in zip(parts, empties, strict=True))


def decide(
    fills: npt.NDArray[np.float32], template: Template, decision: DecisionSettings
) -> SheetReading:
    """Decide every answer of a sheet from its bubble fills alone.

    ``fills`` is float32 (n_bubbles,) in template order, as returned by
    `omr_desktop.engine.measure.measure_fills` or loaded from storage.
    Safe to call from several threads.

    Raises:
        ValueError: ``fills`` does not have one value per template bubble.
    """
    plan = answer_plan(template)
    fills = np.asarray(fills, dtype=np.float32)
    if fills.shape != (plan.n_bubbles,):
        raise ValueError(
            f"fills must have shape ({plan.n_bubbles},), got {fills.shape}"
        )
    layout = field_layout(template)
    fd = _compiled_decisions(fills, layout, decision)
    if fd is None:
        fd = _decide_fields(_relative_fills(fills, layout), layout, decision)
    blank_blocks = _blank_blocks(plan, fd)
    flagged = blank_blocks[layout.field_block] & decision.flag_blank_blocks
    raws, corrected = _field_strings(plan, fd, decision.multi_mark_policy)
    review = fd.needs_review | flagged
    identifiers, doubtful = _identifiers(plan, raws, fd.n_marked.tolist())
    return SheetReading(
        columns=_answer_columns(plan, fd, raws, corrected, review, fills),
        identifiers=identifiers,
        blank_sheet=not bool(fd.n_marked.any()),
        fills=fills,
        blank_blocks=tuple(
            name
            for name, blank in zip(layout.block_names, blank_blocks, strict=True)
            if blank
        ),
        identifiers_in_doubt=doubtful,
        marked=fd.marked[layout.valid],
    )


def _answer_columns(
    plan: AnswerPlan,
    fd: _FieldDecisions,
    raws: list[str],
    corrected: list[str],
    review: npt.NDArray[np.bool_],
    fills: npt.NDArray[np.float32],
) -> AnswerColumns:
    """Return the question columns' answers from the per-field decisions."""
    single = plan.single_fields
    if single is None or plan.question_fill_index is None:
        columns = _ColumnInputs(
            raws=raws,
            corrected=corrected,
            confidence=fd.confidence.tolist(),
            reasons=fd.reason.tolist(),
            review=review.tolist(),
            fills=fills.tolist(),
            starts=plan.field_starts,
            empties=plan.empties,
        )
        return AnswerColumns.from_answers(_answers(plan, columns))
    # Every column is one field: pick the fields' values in column order.
    pick = single.pick
    picked_fills = fills[plan.question_fill_index]
    if np.isnan(picked_fills).any():
        # An Answer holds Python floats, and the trip through float64 quiets
        # a signalling NaN. The columns do the same, so that they encode as
        # the answers do.
        picked_fills = picked_fills.astype(np.float64).astype(np.float32)
    return AnswerColumns(
        questions=plan.question_names,
        answer_raw=cast(tuple[str, ...], pick(raws)),
        answer_corrected=cast(tuple[str, ...], pick(corrected)),
        confidence=fd.confidence[single.index],
        reasons=cast(tuple[str, ...], pick(fd.reason.tolist())),
        needs_review=cast(tuple[bool, ...], pick(review.tolist())),
        fills=picked_fills,
        fill_counts=plan.question_fill_counts,
        empty_values=plan.question_empties,
    )


@dataclass(frozen=True)
class _ColumnInputs:
    """Per-field results as Python lists, for building answers quickly."""

    raws: list[str]
    corrected: list[str]
    confidence: list[float]
    reasons: list[str]
    review: list[bool]
    fills: list[float]
    starts: Sequence[int]
    empties: Sequence[str]


def _answers(plan: AnswerPlan, c: _ColumnInputs) -> tuple[Answer, ...]:
    """Build one `Answer` per question column, in output order."""
    answers: list[Answer] = []
    for col in plan.questions:
        if len(col.members) > 1:
            answers.append(_joined_answer(col, c))
            continue
        i = col.field
        values = (
            col.name,
            c.raws[i],
            c.corrected[i],
            c.confidence[i],
            c.reasons[i],
            c.review[i],
            tuple(c.fills[col.fill_start : col.fill_end]),
            c.empties[i],
        )
        answers.append(_new_tuple(Answer, values))
    return tuple(answers)


# Builds the named tuple from a tuple of all its values without the keyword
# handling of Answer's constructor.
_new_tuple = tuple.__new__


def _joined_answer(col: ColumnPlan, c: _ColumnInputs) -> Answer:
    """Build the `Answer` of a column made of several fields."""
    members = col.members
    empties = [c.empties[i] for i in members]
    column_fills: list[float] = []
    for i in members:
        column_fills.extend(c.fills[c.starts[i] : c.starts[i + 1]])
    return Answer(
        question=col.name,
        answer_raw=_join([c.raws[i] for i in members], empties),
        answer_corrected=_join([c.corrected[i] for i in members], empties),
        confidence_score=min(c.confidence[i] for i in members),
        reason=min((c.reasons[i] for i in members), key=_SEVERITY.__getitem__),
        needs_review=any(c.review[i] for i in members),
        fills=tuple(column_fills),
        empty_value="",
    )


def _identifiers(
    plan: AnswerPlan, raws: Sequence[str], n_marked: Sequence[int]
) -> tuple[dict[str, str], tuple[str, ...]]:
    values: dict[str, str] = {}
    doubtful: list[str] = []
    for col in plan.identifiers:
        values[col.name] = "".join(raws[i] or plan.empties[i] for i in col.members)
        if any(n_marked[i] >= 2 for i in col.members):
            doubtful.append(col.name)
    return values, tuple(doubtful)
