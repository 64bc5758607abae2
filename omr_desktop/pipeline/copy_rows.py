"""Encode readings as PostgreSQL COPY text rows, on the worker threads.

COPY's text format needs a backslash, tab, newline and carriage return
escaped in text values; numbers and booleans need nothing. Fills are written
with six significant digits, 1e-6 of the 0-1 fill scale, so a sheet's COPY
text stays about 7 KB per 750 bubbles.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

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


def real_array(values: Iterable[float]) -> str:
    """Format floats as a PostgreSQL real[] literal (no escaping needed)."""
    return "{" + ",".join([f"{float(v):.6g}" for v in values]) + "}"


def encode_answers(sheet_id: int, answers: Sequence[Answer]) -> bytes:
    """Return the COPY text rows of one sheet's answers, in ANSWER_COLUMNS order."""
    lines = []
    for position, a in enumerate(answers, start=1):
        review = "t" if a.needs_review else "f"
        lines.append(
            f"{sheet_id}\t{copy_text(a.question)}\t{position}\t"
            f"{copy_text(a.answer_raw)}\t{copy_text(a.answer_corrected)}\t"
            f"{float(a.confidence_score):.6g}\t{real_array(a.fills)}\t"
            f"{copy_text(a.reason)}\t{review}\n"
        )
    return "".join(lines).encode("utf-8")


def encode_sheet(sheet_id: int, reading: SheetReading) -> bytes:
    """Return the COPY text row of one sheet's own values, in SHEET_COLUMNS order."""
    identifiers = json.dumps(dict(reading.identifiers), ensure_ascii=False)
    return (
        f"{sheet_id}\t{copy_text(reading.measurement_hash)}\t"
        f"{copy_text(identifiers)}\t{real_array(reading.fills.tolist())}\n"
    ).encode()
