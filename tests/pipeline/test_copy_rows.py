"""COPY text rows, byte for byte, without a database."""

from __future__ import annotations

import numpy as np
import pytest

from omr_desktop.engine import Answer, SheetReading
from omr_desktop.pipeline import copy_rows
from omr_desktop.pipeline.copy_rows import encode_answers, encode_sheet, real_texts

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


def _answer(question: str, raw: str, review: bool, *fills: float) -> Answer:
    return Answer(
        question=question,
        answer_raw=raw,
        answer_corrected=raw[:1],
        confidence_score=2.0 / 3.0,
        reason="clear",
        needs_review=review,
        fills=fills,
    )


def test_real_texts_match_nine_digit_format() -> None:
    rng = np.random.default_rng(4)
    values = np.concatenate(
        [SPECIAL_FLOATS, rng.random(2000).astype(np.float32), SPECIAL_FLOATS]
    )
    expected = [f"{v:.9g}" for v in values.tolist()]
    assert real_texts(values.tolist()) == expected
    assert real_texts(values) == expected  # now from the cache


def test_real_texts_keep_negative_zero() -> None:
    assert real_texts([0.0, -0.0]) == ["0", "-0"]
    assert real_texts([-0.0, 0.0]) == ["-0", "0"]


def test_real_texts_round_to_float32() -> None:
    assert real_texts([0.1]) == ["0.100000001"]
    assert real_texts([1.0 + 2**-30]) == ["1"]


def test_real_text_cache_stops_growing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy_rows, "_REAL_TEXTS", {})
    monkeypatch.setattr(copy_rows, "_MAX_REAL_TEXTS", 100)
    values = np.linspace(0, 1, 300, dtype=np.float32)
    assert real_texts(values) == [f"{v:.9g}" for v in values.tolist()]
    assert len(copy_rows._REAL_TEXTS) == 100


def test_answer_rows_byte_for_byte() -> None:
    answers = [
        _answer("q1", "B", False, 0.0, 0.9, 0.25),
        _answer("100% q\t2", "A\\C", True, -0.0, 1.5e-7),
        _answer("q3", "", False),
    ]
    third = "0.666666687"  # 2/3 rounded to float32
    assert (
        encode_answers(42, answers)
        == (
            f"42\tq1\t1\tB\tB\t{third}\t{{0,0.899999976,0.25}}\tclear\tf\n"
            f"42\t100% q\\t2\t2\tA\\\\C\tA\t{third}\t{{-0,1.50000005e-07}}\tclear\tt\n"
            f"42\tq3\t3\t\t\t{third}\t{{}}\tclear\tf\n"
        ).encode()
    )


def test_answer_rows_escape_special_characters() -> None:
    texts = ["plain", "tab\there", "back\\slash", "new\nline", "cr\rhere", "ok"]
    answers = [_answer(f"q{i}", text, False, 0.5) for i, text in enumerate(texts)]
    rows = encode_answers(1, answers).decode().splitlines()
    raws = [row.split("\t")[3] for row in rows]
    assert raws == ["plain", "tab\\there", "back\\\\slash", "new\\nline"] + [
        "cr\\rhere",
        "ok",
    ]


def test_no_answers_give_no_rows() -> None:
    assert encode_answers(1, []) == b""


def test_sheet_row_byte_for_byte() -> None:
    reading = SheetReading(
        answers=(),
        identifiers={"roll": "12\t3"},
        blank_sheet=False,
        fills=np.array([0.25, -0.0, 0.1], dtype=np.float32),
        measurement_hash="abc",
    )
    assert encode_sheet(5, reading) == (
        b'5\tabc\t{"roll": "12\\\\t3"}\t{0.25,-0,0.100000001}\n'
    )
