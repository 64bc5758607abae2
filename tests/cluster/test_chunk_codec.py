"""Packing chunk readings for Redis: the COPY rows must come back identical."""

from __future__ import annotations

import numpy as np
import pytest

from omr_desktop.cluster.chunk_codec import (
    MAGIC,
    ChunkFormatError,
    pack_readings,
    unpack_readings,
)
from omr_desktop.cluster.tasks import ClusterTaskError, check_arguments, split
from omr_desktop.engine import SheetReading
from omr_desktop.engine.decide import Answer
from omr_desktop.pipeline.copy_rows import encode_answers, encode_sheet

TASK_ID = "c8f2b3c4-0000-4000-8000-000000000001"


def reading(seed: int) -> SheetReading:
    rng = np.random.default_rng(seed)
    answers = []
    for number in range(1, 6):
        fills = rng.random(4, dtype=np.float32)
        answers.append(
            Answer(
                question=f"q{number}\ttab",
                answer_raw="AB" if number == 2 else "C",
                answer_corrected="*" if number == 2 else "C",
                confidence_score=float(rng.random(dtype=np.float32)),
                reason="multi_mark" if number == 2 else "clear",
                needs_review=number == 2,
                fills=tuple(float(f) for f in fills),
            )
        )
    return SheetReading.with_answers(
        tuple(answers),
        identifiers={"roll": "0042", "naïve": "é"},
        blank_sheet=False,
        fills=rng.random(20, dtype=np.float32),
        measurement_hash="abc123",
        blank_blocks=("block2",),
    )


def test_round_trip_gives_same_copy_rows() -> None:
    readings = {11: reading(1), 12: "Image not found: /data/12.png", 13: reading(2)}

    unpacked = unpack_readings(pack_readings(readings))

    assert list(unpacked) == [11, 12, 13]
    assert unpacked[12] == "Image not found: /data/12.png"
    for sheet_id in (11, 13):
        original = readings[sheet_id]
        copy = unpacked[sheet_id]
        assert isinstance(original, SheetReading)
        assert isinstance(copy, SheetReading)
        assert encode_answers(sheet_id, copy.answers) == encode_answers(
            sheet_id, original.answers
        )
        assert encode_sheet(sheet_id, copy) == encode_sheet(sheet_id, original)
        assert copy.fills.dtype == np.float32
        assert np.array_equal(copy.fills, original.fills)
        assert copy.blank_blocks == original.blank_blocks


def test_empty_chunk_round_trips() -> None:
    assert unpack_readings(pack_readings({})) == {}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "does not start"),
        (b"JUNK" + b"\0" * 10, "does not start"),
        (MAGIC + b"\0\0\0\2{]", "not JSON"),
    ],
)
def test_invalid_chunk_is_rejected(data: bytes, message: str) -> None:
    with pytest.raises(ChunkFormatError, match=message):
        unpack_readings(data)


def test_chunk_of_another_format_is_named() -> None:
    # Format 1 also packed each answer's fills, so its numbers do not line up.
    packed = b"OMRC1" + pack_readings({1: reading(3)})[len(MAGIC) :]

    with pytest.raises(ChunkFormatError, match="format 1, from another version"):
        unpack_readings(packed)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (MAGIC[:-1], "truncated before its format version"),
        (MAGIC + b"\0\0", "truncated: 7 bytes, too short"),
        (MAGIC + b"\0\0\0\x10{}", "header is 16 bytes long, but only 2 bytes follow"),
        (MAGIC[:-1] + b"\x01", "in format 0x01, from another version"),
    ],
)
def test_truncated_chunk_is_named(data: bytes, message: str) -> None:
    with pytest.raises(ChunkFormatError, match=message):
        unpack_readings(data)


def test_answer_fills_left_out() -> None:
    original = reading(4)
    assert isinstance(original, SheetReading)

    copy = unpack_readings(pack_readings({1: original}))[1]

    assert isinstance(copy, SheetReading)
    assert [a.fills for a in copy.answers] == [()] * len(original.answers)
    packed = pack_readings({1: original})
    header = int.from_bytes(packed[len(MAGIC) : len(MAGIC) + 4], "big")
    numbers = (len(packed) - len(MAGIC) - 4 - header) // 4
    assert numbers == original.fills.size + len(original.answers)


def test_truncated_chunk_is_rejected() -> None:
    packed = pack_readings({1: reading(3)})

    with pytest.raises(ChunkFormatError):
        unpack_readings(packed[:-4])
    with pytest.raises(ChunkFormatError):
        unpack_readings(packed[:-3])


def test_arguments_are_normalised() -> None:
    task_id, ids, profile = check_arguments(TASK_ID.upper(), [3, 1, 3], 2, 64)

    assert task_id == TASK_ID
    assert ids == (3, 1)
    assert profile == 2


@pytest.mark.parametrize(
    ("task_id", "sheet_ids", "profile_id", "chunk", "message"),
    [
        ("not-a-uuid", [1], 2, 64, "'not-a-uuid' is not a UUID"),
        (TASK_ID, "1,2", 2, 64, "must be a list of integers"),
        (TASK_ID, [1, True], 2, 64, "must be a list of integers"),
        (TASK_ID, [], 2, 64, "is empty"),
        (TASK_ID, [1], "2", 64, "profile_id must be an integer, not '2'"),
        (TASK_ID, [1], 2, 0, "chunk_sheets must be a positive integer, not 0"),
    ],
)
def test_invalid_arguments_are_named(
    task_id: object, sheet_ids: object, profile_id: object, chunk: object, message: str
) -> None:
    with pytest.raises(ClusterTaskError, match=message):
        check_arguments(task_id, sheet_ids, profile_id, chunk)


def test_split_keeps_order_and_remainder() -> None:
    assert split([5, 6, 7, 8, 9], 2) == [[5, 6], [7, 8], [9]]
