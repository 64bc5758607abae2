"""Encode readings as PostgreSQL binary COPY rows, on the worker threads.

Both staging tables are filled in COPY's binary format: the server reads a
real[] of fills from its binary form in about half the time it parses the
text form (0.7 s against 1.2 s for 5.3 million fills, when each answer
still stored its own), and text values need no escaping. Numbers are
big-endian. Fills and confidence scores are float32, the ``real`` the
columns store, so the stored value is bit for bit the one the engine
decided on, and a re-decide from stored fills reads the same marks.
Texts are UTF-8, which the writer's connection must declare
(client_encoding UTF8): binary COPY converts text from the client encoding
too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from omr_desktop.engine import Answer, AnswerColumns, SheetReading

# Columns of the answer staging table, in COPY order: the numbers of a row
# are next to each other, so that one slice of a numpy buffer holds them.
ANSWER_COLUMNS = (
    "sheet_id",
    "question",
    "position",
    "confidence_score",
    "answer_raw",
    "answer_corrected",
    "reason",
    "needs_review",
)

# Binary COPY's file header (signature, flags, no header extension) and
# trailer (a field count of -1).
BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
BINARY_TRAILER = b"\xff\xff"
_FLOAT4_OID = 700

# Columns of the sheet staging table, in COPY order.
SHEET_COLUMNS = ("sheet_id", "measurement_hash", "identifiers", "fills", "fills_digest")

# A binary COPY field of NULL: a length of -1.
_NULL_FIELD = b"\xff\xff\xff\xff"


def binary_copy(rows: bytes) -> bytes:
    """Return binary COPY data: the header, the encoded ``rows``, the trailer."""
    return BINARY_HEADER + rows + BINARY_TRAILER


def encode_answers(sheet_id: int, answers: Sequence[Answer]) -> bytes:
    """Return the binary COPY rows of one sheet's answers, in ANSWER_COLUMNS order.

    Wrap rows with `binary_copy` before sending them. A reading's answers
    are encoded faster from its columns, with `encode_answer_columns`.
    """
    return encode_answer_columns(sheet_id, AnswerColumns.from_answers(answers))


def encode_answer_columns(sheet_id: int, columns: AnswerColumns) -> bytes:
    """Return the binary COPY rows of one sheet's answer columns.

    The same bytes as `encode_answers` of ``columns.answers()``. Wrap rows
    with `binary_copy` before sending them. Every row's confidence field
    (length word and float) is written into one big-endian numpy buffer.
    The texts come from a cache of encoded fields. Each row is then one
    slice of that buffer and four text fields, joined by one bytes format
    cached per sheet layout.
    """
    if not len(columns):
        return b""
    layout = _binary_layout(columns.questions)
    fields = np.empty((len(columns), 2), dtype=">u4")
    fields[:, 0] = 4
    fields[:, 1] = columns.confidence.astype(np.float32).view(np.uint32)
    numbers = fields.tobytes()
    head = _ROW_HEAD + sheet_id.to_bytes(8, "big", signed=True)
    values: list[bytes] = [head]
    values += [numbers[a : a + 8] for a in range(0, len(numbers), 8)]
    values += _text_fields(columns.answer_raw)
    values += _text_fields(columns.answer_corrected)
    values += _text_fields(columns.reasons)
    values += [_TRUE_FIELD if flag else _FALSE_FIELD for flag in columns.needs_review]
    return layout.format % layout.row_order(values)


# Every answer row starts with its field count and the sheet id's length.
_ROW_HEAD = len(ANSWER_COLUMNS).to_bytes(2, "big") + (8).to_bytes(4, "big")
_TRUE_FIELD = (1).to_bytes(4, "big") + b"\x01"
_FALSE_FIELD = (1).to_bytes(4, "big") + b"\x00"


@dataclass(frozen=True)
class _BinaryLayout:
    """The parts that the binary rows of one sheet layout share.

    Attributes:
        format: bytes %-format of all rows, with each question and
            position written in.
        row_order: takes the values column by column (row head, every row's
            confidence, raws, corrected, reasons, review flags) and returns
            them in the format's order.
    """

    format: bytes
    row_order: Callable[[list[bytes]], tuple[bytes, ...]]


@functools.lru_cache(maxsize=64)
def _binary_layout(questions: tuple[str, ...]) -> _BinaryLayout:
    n = len(questions)
    lines: list[bytes] = []
    order: list[int] = []
    raw, corrected, reason, review = 1 + n, 1 + 2 * n, 1 + 3 * n, 1 + 4 * n
    for k, question in enumerate(questions):
        name = question.encode()
        position = (k + 1).to_bytes(4, "big", signed=True)
        fixed = len(name).to_bytes(4, "big") + name + (4).to_bytes(4, "big") + position
        lines.append(b"%b" + fixed.replace(b"%", b"%%") + b"%b%b%b%b%b")
        order += [0, 1 + k, raw + k, corrected + k, reason + k, review + k]
    return _BinaryLayout(
        format=b"".join(lines),
        row_order=operator.itemgetter(*order),
    )


# Encoded text fields (length and UTF-8 bytes) by value. Answers, readings
# and reasons take few distinct values; the cache stops growing at this
# size, so that unusual texts cannot grow it without bound.
_MAX_TEXT_FIELDS = 4096
_TEXT_FIELDS: dict[str, bytes] = {}


def _text_fields(values: Sequence[str]) -> list[bytes]:
    """Return each value's encoded field, looked up in C when all are cached."""
    try:
        return list(map(_TEXT_FIELDS.__getitem__, values))
    except KeyError:
        return list(map(_text_field, values))


def _text_field(value: str) -> bytes:
    field = _TEXT_FIELDS.get(value)
    if field is None:
        data = value.encode()
        field = len(data).to_bytes(4, "big") + data
        # Two threads may encode one value at once; both store the same bytes.
        if len(_TEXT_FIELDS) < _MAX_TEXT_FIELDS:
            _TEXT_FIELDS[value] = field
    return field


def encode_sheet(
    sheet_id: int, reading: SheetReading, stored_digest: bytes | None = None
) -> bytes:
    """Return the binary COPY row of one sheet's own values, in SHEET_COLUMNS order.

    Wrap rows with `binary_copy` before sending them. The fills, 850 on a
    demo sheet, are the bulk: parsed from text they took the server about
    0.9 s for 7,109 sheets. When their digest equals ``stored_digest``, the
    sheet's digest in the database, the fills are sent as NULL: the stored
    ones are the same.
    """
    identifiers = json.dumps(dict(reading.identifiers), ensure_ascii=False).encode()
    fills = np.asarray(reading.fills, dtype=np.float32).ravel()
    elements = np.empty((fills.size, 2), dtype=">u4")
    elements[:, 0] = 4
    elements[:, 1] = fills.view(np.uint32)
    array = struct.pack(">iiiii", 1, 0, _FLOAT4_OID, fills.size, 1) + elements.tobytes()
    digest = fills_digest(array)
    if digest == stored_digest:
        fills_field = _NULL_FIELD
    else:
        fills_field = struct.pack(">i", len(array)) + array
    return b"".join(
        [
            struct.pack(">hiq", len(SHEET_COLUMNS), 8, sheet_id),
            _text_field(reading.measurement_hash),
            # jsonb's binary form: format version 1, then the JSON text.
            struct.pack(">ib", len(identifiers) + 1, 1),
            identifiers,
            fills_field,
            struct.pack(">i", len(digest)),
            digest,
        ]
    )


def fills_digest(array: bytes) -> bytes:
    """Return the digest of fills in the binary form of a real[].

    The same as the server's ``sha256(array_send(fills))``, which keeps
    ``sheets.fills_digest`` (migration 0011).
    """
    return hashlib.sha256(array).digest()
