"""Column definitions of the batch list (Panel A) and the student list (Panel B)."""

from __future__ import annotations

from PySide6.QtCore import Qt

from omr_desktop.db.queries import BatchSummary, SheetSummary
from omr_desktop.gui.models.record_table_model import Column, RecordTableModel

RIGHT = Qt.AlignmentFlag.AlignRight

BATCH_COLUMNS: list[Column[BatchSummary]] = [
    Column("Name", lambda b: b.name),
    Column("Sheets", lambda b: f"{b.sheet_count:,}", lambda b: b.sheet_count, RIGHT),
    Column("Date", lambda b: b.created_at.strftime("%Y-%m-%d"), lambda b: b.created_at),
    Column("Status", lambda b: b.status),
]

SHEET_COLUMNS: list[Column[SheetSummary]] = [
    Column("#", lambda s: str(s.sequence_no), lambda s: s.sequence_no, RIGHT),
    Column("Code", lambda s: s.student_code),
    Column("Name", lambda s: s.student_name),
    Column(
        "Score",
        lambda s: "" if s.score is None else format(s.score.normalize(), "f"),
        lambda s: -1e9 if s.score is None else float(s.score),
        RIGHT,
    ),
    Column("Flags", lambda s: ", ".join(s.flags)),
    Column("Profile", lambda s: s.profile_name),
    Column("Processed", lambda s: s.processed_at),
]


def batch_table_model(parent: object = None) -> RecordTableModel[BatchSummary]:
    return RecordTableModel(BATCH_COLUMNS, parent)


def sheet_table_model(parent: object = None) -> RecordTableModel[SheetSummary]:
    return RecordTableModel(SHEET_COLUMNS, parent)
