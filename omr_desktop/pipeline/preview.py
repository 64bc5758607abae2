"""A profile's changes to one sheet, computed without writing anything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omr_desktop.db.database import Database
from omr_desktop.db.queries import load_sheet_detail
from omr_desktop.engine import (
    SheetReading,
    Template,
    decide,
    measurement_hash,
    read_sheet,
)
from omr_desktop.pipeline.reprocess import load_profile_settings


@dataclass(frozen=True)
class SheetPreview:
    """A profile's reading of one sheet compared with the stored answers.

    Attributes:
        label: how the editor knows the sheet ("Sheet 3 (R0003)").
        changes: (question, stored answer, new answer) for each answer whose
            corrected value would change; hand corrections are kept, as a
            reprocess keeps them, so they never appear here.
        from_stored_fills: the preview re-decided the stored fills instead of
            reading the image (same measurement settings).
    """

    label: str
    changes: tuple[tuple[str, str, str], ...]
    from_stored_fills: bool


def preview_sheet(database: Database, sheet_id: int, profile_id: int) -> SheetPreview:
    """Read ``sheet_id`` with ``profile_id`` and list the answers that would change.

    Uses the stored fills when they were measured as the profile measures
    (no image decode), else reads the image. Runs on a worker thread.

    Raises:
        ValueError: the sheet does not exist.
        omr_desktop.pipeline.reprocess.ReprocessError: the profile is unusable.
        omr_desktop.engine.SheetImageError: the image cannot be read.
    """
    with database.connect() as conn:
        detail = load_sheet_detail(conn, sheet_id)
        settings = load_profile_settings(conn, profile_id)
    if detail is None:
        raise ValueError(f"Sheet {sheet_id} does not exist.")
    template = Template.from_dict(detail.layout)
    stored_hash = _stored_hash(database, sheet_id)
    reading: SheetReading
    if detail.fills is not None and stored_hash == measurement_hash(settings):
        reading = decide(
            np.asarray(detail.fills, dtype=np.float32), template, settings.decision
        )
        from_fills = True
    else:
        reading = read_sheet(Path(detail.image_path), template, settings)
        from_fills = False
    stored = {a.question: a for a in detail.answers}
    changes = []
    for answer in reading.answers:
        old = stored.get(answer.question)
        if old is None or old.corrected_by:
            continue
        if old.answer_corrected != answer.answer_corrected:
            changes.append(
                (answer.question, old.answer_corrected, answer.answer_corrected)
            )
    label = f"Sheet {detail.sequence_no} ({detail.student_code or detail.id})"
    return SheetPreview(label, tuple(changes), from_fills)


def _stored_hash(database: Database, sheet_id: int) -> str | None:
    with database.connect() as conn:
        row = conn.execute(
            "SELECT measurement_hash FROM sheets WHERE id = %s", (sheet_id,)
        ).fetchone()
    return None if row is None else row[0]
