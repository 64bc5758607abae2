"""COPY rows, byte for byte, without a database."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import numpy as np
import pytest

from omr_desktop.engine import Answer, SheetReading
from omr_desktop.pipeline import copy_rows
from omr_desktop.pipeline.copy_rows import (
    BINARY_HEADER,
    BINARY_TRAILER,
    binary_copy,
    encode_answers,
    encode_sheet,
)

SPECIAL_FLOATS = np.array(
    [
        0.0,
        -0.0,
        1.0,
        0.1,
        1.5e-7,
        1e-45,  # the smallest float32 subnormal
        3.4028235e38,
        np.inf,
        -np.inf,
        np.nan,
        0.123456789,
        2.0 / 3.0,
    ],
    dtype=np.float32,
)


def _answer(
    question: str, raw: str, review: bool, confidence: float = 2.0 / 3.0
) -> Answer:
    return Answer(
        question=question,
        answer_raw=raw,
        answer_corrected=raw[:1],
        confidence_score=confidence,
        reason="clear",
        needs_review=review,
        # The sheet's staged row carries the fills, not the answer rows.
        fills=(0.5, 0.25),
    )


def test_text_field_cache_stops_growing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy_rows, "_TEXT_FIELDS", {})
    monkeypatch.setattr(copy_rows, "_MAX_TEXT_FIELDS", 100)
    answers = [_answer(f"q{i}", f"raw {i}", False) for i in range(300)]

    rows = _decode_rows(encode_answers(1, answers))

    assert [row[4] for row in rows] == [f"raw {i}" for i in range(300)]
    assert len(copy_rows._TEXT_FIELDS) == 100


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">i", len(data)) + data


def _row(sheet_id: int, answer: Answer, position: int, confidence: float) -> bytes:
    return (
        struct.pack(">hiq", 8, 8, sheet_id)
        + _text(answer.question)
        + struct.pack(">ii", 4, position)
        + struct.pack(">if", 4, confidence)
        + _text(answer.answer_raw)
        + _text(answer.answer_corrected)
        + _text(answer.reason)
        + struct.pack(">ib", 1, answer.needs_review)
    )


def _decode_rows(data: bytes) -> list[tuple[Any, ...]]:
    """Parse binary COPY rows of the answer columns back into values.

    The confidence comes back as its four bytes, so that -0.0 and NaN
    compare exactly.
    """
    rows: list[tuple[Any, ...]] = []
    at = 0
    while at < len(data):
        (count,) = struct.unpack_from(">h", data, at)
        at += 2
        fields = []
        for _ in range(count):
            (length,) = struct.unpack_from(">i", data, at)
            fields.append(data[at + 4 : at + 4 + length])
            at += 4 + length
        sheet_id, question, position, confidence = fields[:4]
        rows.append(
            (
                struct.unpack(">q", sheet_id)[0],
                question.decode(),
                struct.unpack(">i", position)[0],
                confidence,
                *(f.decode() for f in fields[4:7]),
                fields[7] == b"\x01",
            )
        )
    return rows


def test_answer_rows_byte_for_byte() -> None:
    answers = [
        _answer("q1", "B", False),
        _answer("100% q\t2", "A\\C", True),
        _answer("q3", "", False),
    ]
    third = float(np.float32(2.0 / 3.0))
    expected = b"".join(_row(42, a, k, third) for k, a in enumerate(answers, 1))

    assert encode_answers(42, answers) == expected


def test_answer_rows_keep_texts_and_floats_exactly() -> None:
    texts = ["plain", "tab\there", "back\\slash", "new\nline", "cr\rhere", "Zoë ✓", ""]
    # Every special float once, the texts in turn.
    cycled = [texts[i % len(texts)] for i in range(len(SPECIAL_FLOATS))]
    answers = [
        _answer(f"q{i}%", text, i % 2 == 0, SPECIAL_FLOATS[i])
        for i, text in enumerate(cycled)
    ]

    rows = _decode_rows(encode_answers(7, answers))

    assert [row[4] for row in rows] == cycled
    assert [row[1] for row in rows] == [f"q{i}%" for i in range(len(cycled))]
    assert [row[2] for row in rows] == list(range(1, len(cycled) + 1))
    assert [row[7] for row in rows] == [i % 2 == 0 for i in range(len(cycled))]
    assert b"".join(row[3] for row in rows) == SPECIAL_FLOATS.astype(">f4").tobytes()


def test_binary_copy_adds_header_and_trailer() -> None:
    rows = encode_answers(1, [_answer("q1", "A", False)])

    data = binary_copy(rows)

    assert data == BINARY_HEADER + rows + BINARY_TRAILER
    assert data.startswith(b"PGCOPY\n\xff\r\n\x00")
    assert len(BINARY_HEADER) == 19


def test_no_answers_give_no_rows() -> None:
    assert encode_answers(1, []) == b""


def test_sheet_row_byte_for_byte() -> None:
    reading = SheetReading.with_answers(
        (),
        identifiers={"roll": "12\t3"},
        blank_sheet=False,
        fills=np.array([0.25, -0.0, 0.1], dtype=np.float32),
        measurement_hash="abc",
    )
    identifiers = b'{"roll": "12\\t3"}'
    array = struct.pack(">iiiii", 1, 0, 700, 3, 1) + b"".join(
        struct.pack(">if", 4, f) for f in (0.25, -0.0, np.float32(0.1))
    )

    digest = hashlib.sha256(array).digest()
    before = (
        struct.pack(">hiq", 5, 8, 5)
        + _text("abc")
        + struct.pack(">ib", len(identifiers) + 1, 1)
        + identifiers
    )
    after = struct.pack(">i", 32) + digest

    assert (
        encode_sheet(5, reading)
        == before + struct.pack(">i", len(array)) + array + after
    )
    # Fills whose digest the database has already are sent as NULL.
    assert encode_sheet(5, reading, digest) == before + struct.pack(">i", -1) + after
    assert encode_sheet(5, reading, bytes(32)) == encode_sheet(5, reading)
