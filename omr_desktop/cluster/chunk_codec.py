"""Pack a chunk's readings into bytes for Redis, and unpack them again.

A chunk worker stores its readings under one Redis key, and the final step
reads them back to encode the COPY rows, so the two ends must agree on
every value the rows hold. The format is a JSON header with the text values
followed by one little-endian float32 block with every number, so fills
and confidence scores come back bit for bit as the engine made them (the
``real`` columns store float32, see ``pipeline/copy_rows.py``).

Layout: ``MAGIC``, the header's length as a 4-byte big-endian integer, the
UTF-8 JSON header, then the float32 block. For each sheet that was read,
the block holds its ``fills``, then one confidence score per answer. Each
answer's own fills are left out: they are a slice of the sheet's fills,
and only the sheet's are stored. A 150-question sheet of 5 options with
850 fills packs into about 10 kB.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from omr_desktop.engine import SheetReading
from omr_desktop.engine.decide import Answer

# The format's version is part of the magic, so a worker and a final step
# of different versions fail with ChunkFormatError instead of misreading.
# Version 1 also packed each answer's fills.
MAGIC = b"OMRC2"
_LENGTH = struct.Struct(">I")
_FLOAT = np.dtype("<f4")


class ChunkFormatError(ValueError):
    """The bytes are not a chunk packed by ``pack_readings``."""


def pack_readings(readings: Mapping[int, SheetReading | str]) -> bytes:
    """Pack sheet id to reading (or to the reason it failed) into bytes."""
    sheets: list[dict[str, Any]] = []
    blocks: list[np.ndarray[Any, np.dtype[np.float32]]] = []
    for sheet_id, reading in readings.items():
        if isinstance(reading, str):
            sheets.append({"id": sheet_id, "error": reading})
            continue
        sheets.append(_sheet_header(sheet_id, reading))
        blocks.append(np.asarray(reading.fills, dtype=_FLOAT).ravel())
        blocks.append(
            np.array([a.confidence_score for a in reading.answers], dtype=_FLOAT)
        )
    header = json.dumps({"sheets": sheets}, ensure_ascii=False).encode()
    floats = np.concatenate(blocks) if blocks else np.zeros(0, dtype=_FLOAT)
    return MAGIC + _LENGTH.pack(len(header)) + header + floats.tobytes()


def _sheet_header(sheet_id: int, reading: SheetReading) -> dict[str, Any]:
    return {
        "id": sheet_id,
        "hash": reading.measurement_hash,
        "identifiers": dict(reading.identifiers),
        "blank": reading.blank_sheet,
        "blank_blocks": list(reading.blank_blocks),
        "in_doubt": list(reading.identifiers_in_doubt),
        "fills": int(np.asarray(reading.fills).size),
        "answers": [
            [
                a.question,
                a.answer_raw,
                a.answer_corrected,
                a.reason,
                a.needs_review,
                a.empty_value,
            ]
            for a in reading.answers
        ],
    }


def unpack_readings(data: bytes) -> dict[int, SheetReading | str]:
    """Unpack what ``pack_readings`` packed.

    The readings carry no ``marked`` array and their answers no fills: the
    COPY rows use neither.

    Raises:
        ChunkFormatError: the bytes are truncated or not in this format.
    """
    header, floats = _split(data)
    readings: dict[int, SheetReading | str] = {}
    offset = 0
    try:
        for sheet in header["sheets"]:
            if "error" in sheet:
                readings[int(sheet["id"])] = str(sheet["error"])
                continue
            reading, offset = _sheet_reading(sheet, floats, offset)
            readings[int(sheet["id"])] = reading
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ChunkFormatError(f"Invalid chunk header: {exc}") from exc
    if offset != floats.size:
        raise ChunkFormatError(
            f"The chunk holds {floats.size} numbers but its header accounts "
            f"for {offset}."
        )
    return readings


def _split(data: bytes) -> tuple[dict[str, Any], np.ndarray[Any, np.dtype[np.float32]]]:
    _check_magic(data)
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start:
        raise ChunkFormatError(
            f"The chunk is truncated: {len(data)} bytes, too short for its "
            "header's length."
        )
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if start + length > len(data):
        raise ChunkFormatError(
            f"The chunk is truncated: its header is {length} bytes long, but "
            f"only {len(data) - start} bytes follow."
        )
    body = data[start + length :]
    if len(body) % _FLOAT.itemsize:
        raise ChunkFormatError("The chunk's number block is truncated.")
    try:
        header = json.loads(data[start : start + length])
    except ValueError as exc:
        raise ChunkFormatError(f"The chunk header is not JSON: {exc}") from exc
    return header, np.frombuffer(body, dtype=_FLOAT)


def _check_magic(data: bytes) -> None:
    """Raise unless ``data`` starts with this format's magic and version."""
    if data.startswith(MAGIC):
        return
    prefix = MAGIC[:-1]
    if not data.startswith(prefix):
        raise ChunkFormatError("The data does not start with a chunk header.")
    version = data[len(prefix) : len(MAGIC)]
    if not version:
        raise ChunkFormatError("The chunk is truncated before its format version.")
    version_text = version.decode() if version.isdigit() else f"0x{version.hex()}"
    raise ChunkFormatError(
        f"The chunk is in format {version_text}, from another version of OMR "
        f"Desktop; this one reads format {MAGIC[-1:].decode()}. Run the same "
        "version on every worker and where tasks start."
    )


def _sheet_reading(
    sheet: dict[str, Any],
    floats: np.ndarray[Any, np.dtype[np.float32]],
    offset: int,
) -> tuple[SheetReading, int]:
    def take(count: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        nonlocal offset
        if offset + count > floats.size:
            raise ChunkFormatError("The chunk's number block is too short.")
        block = floats[offset : offset + count]
        offset += count
        return block

    fills = take(int(sheet["fills"])).astype(np.float32)
    rows = sheet["answers"]
    confidences = take(len(rows)).tolist()
    answers = []
    for row, confidence in zip(rows, confidences, strict=True):
        question, raw, corrected, reason, review, empty = row
        answers.append(
            Answer(
                question=str(question),
                answer_raw=str(raw),
                answer_corrected=str(corrected),
                confidence_score=float(confidence),
                reason=str(reason),
                needs_review=bool(review),
                fills=(),
                empty_value=str(empty),
            )
        )
    reading = SheetReading.with_answers(
        answers,
        identifiers={str(k): str(v) for k, v in sheet["identifiers"].items()},
        blank_sheet=bool(sheet["blank"]),
        fills=fills,
        measurement_hash=str(sheet["hash"]),
        blank_blocks=tuple(sheet["blank_blocks"]),
        identifiers_in_doubt=tuple(sheet["in_doubt"]),
    )
    return reading, offset
