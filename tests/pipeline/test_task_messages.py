"""Messages of reprocess tasks: number agreement, the contract's words, advice."""

from __future__ import annotations

import pytest

from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.task_manager import TaskConflictError
from omr_desktop.plural import counted, id_list


def test_conflict_with_one_sheet_is_singular() -> None:
    message = str(TaskConflictError("t-1", [150]))

    assert message.startswith("Sheet 150 is already in task t-1, which is queued")


def test_conflict_with_many_sheets_counts_the_rest() -> None:
    message = str(TaskConflictError("t-1", list(range(1, 26))))

    assert message.startswith("Sheets 1, 2, 3,")
    assert "20 and 5 more are already in task t-1" in message


def test_conflict_advice_fits_http() -> None:
    message = str(TaskConflictError("t-1", [150, 151]))

    # The HTTP interface cannot cancel a task, so the advice is to wait.
    assert "cancel" not in message
    assert message.endswith("Wait for that task to finish, then try again.")


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, "0 sheets"), (1, "1 sheet"), (2, "2 sheets"), (2500, "2,500 sheets")],
)
def test_counted_matches_noun_to_count(count: int, expected: str) -> None:
    assert counted(count, "sheet") == expected


def test_id_list_counts_ids_past_limit() -> None:
    assert id_list([1, 2, 3], limit=2) == "1, 2 and 1 more"
    assert id_list([1, 2], limit=2) == "1, 2"


@pytest.mark.parametrize(
    ("processed", "total", "expected"),
    [
        (324, 7109, "Processing: 324/7109 sheets completed"),
        (1, 1, "Processing: 1/1 sheet completed"),
        (0, 1, "Processing: 0/1 sheet completed"),
    ],
)
def test_processing_message_follows_contract(
    processed: int, total: int, expected: str
) -> None:
    assert ev.processing_message(processed, total) == expected


@pytest.mark.parametrize(
    ("total", "failed", "expected"),
    [
        (7109, 2, "All 7109 sheets completed (2 failed)"),
        (2, 0, "All 2 sheets completed (0 failed)"),
        (1, 1, "1/1 sheet completed (1 failed)"),
    ],
)
def test_processing_end_message_follows_contract(
    total: int, failed: int, expected: str
) -> None:
    assert ev.processing_done_message(total, failed) == expected
