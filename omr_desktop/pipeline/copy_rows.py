"""Encode readings as PostgreSQL COPY text rows, on the worker threads.

COPY's text format needs a backslash, tab, newline and carriage return
escaped in text values; numbers and booleans need nothing. The text is
UTF-8, so the writer's connection must use client_encoding UTF8.

Fills and confidence scores go into ``real`` (float32) columns. They are
rounded to float32 here and written with nine significant digits, which
round-trips a float32 exactly, so the stored value is the one the engine
decided on and a re-decide from stored fills gives the same answers.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterable, Sequence

import numpy as np

from omr_desktop.engine import Answer, SheetReading

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})

# Columns of the answer staging table, in COPY order.
ANSWER_COLUMNS = (
    "sheet_id",
    "question",
    "position",
    "answer_raw",
    "answer_corrected",
    "confidence_score",
    "fills",
    "reason",
    "needs_review",
)
# Columns of the sheet staging table, in COPY order.
SHEET_COLUMNS = ("sheet_id", "measurement_hash", "identifiers", "fills")


def copy_text(value: str) -> str:
    """Escape a text value for COPY's text format."""
    return value.translate(_ESCAPES)


def as_real(values: Iterable[float]) -> list[float]:
    """Round values to float32, as a ``real`` column stores them."""
    rounded: list[float] = np.fromiter(values, dtype=np.float32).tolist()
    return rounded


def real_array(values: Iterable[float]) -> str:
    """Format floats as a PostgreSQL real[] literal (no escaping needed)."""
    return "{" + ",".join([f"{v:.9g}" for v in as_real(values)]) + "}"


def encode_answers(sheet_id: int, answers: Sequence[Answer]) -> bytes:
    """Return the COPY text rows of one sheet's answers, in ANSWER_COLUMNS order.

    The rows are filled into one %-format string per sheet layout (cached),
    so the per-value work happens in one C-level formatting call; in a
    Python loop over 150 answers it took 0.7 ms a sheet.
    """
    layout = tuple((a.question, len(a.fills)) for a in answers)
    fills = as_real(itertools.chain.from_iterable(a.fills for a in answers))
    confidences = as_real(a.confidence_score for a in answers)
    values: list[object] = []
    start = 0
    for a, confidence in zip(answers, confidences, strict=True):
        values.append(sheet_id)
        values.append(copy_text(a.answer_raw))
        values.append(copy_text(a.answer_corrected))
        values.append(confidence)
        values.extend(fills[start : start + len(a.fills)])
        start += len(a.fills)
        values.append(copy_text(a.reason))
        values.append("t" if a.needs_review else "f")
    return (_answers_format(layout) % tuple(values)).encode()


@functools.lru_cache(maxsize=64)
def _answers_format(layout: tuple[tuple[str, int], ...]) -> str:
    lines = []
    for position, (question, fill_count) in enumerate(layout, start=1):
        name = copy_text(question).replace("%", "%%")
        fills = ",".join(["%.9g"] * fill_count)
        lines.append(f"%d\t{name}\t{position}\t%s\t%s\t%.9g\t{{{fills}}}\t%s\t%s\n")
    return "".join(lines)


def encode_sheet(sheet_id: int, reading: SheetReading) -> bytes:
    """Return the COPY text row of one sheet's own values, in SHEET_COLUMNS order."""
    identifiers = json.dumps(dict(reading.identifiers), ensure_ascii=False)
    return (
        f"{sheet_id}\t{copy_text(reading.measurement_hash)}\t"
        f"{copy_text(identifiers)}\t{real_array(reading.fills.tolist())}\n"
    ).encode()
