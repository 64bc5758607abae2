"""The activity log: row format, the model, and a view that follows new rows."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from PySide6.QtCore import Qt
from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

from omr_desktop.gui.models.activity_log_model import (
    EVENT_ROLE,
    ActivityLogModel,
    format_elapsed,
    format_time_of_day,
)
from omr_desktop.gui.widgets.activity_log import ActivityLogView
from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.events import ProgressEvent

pytestmark = pytest.mark.gui

# 3:55:26 PM local time, as in a batch upload's log.
START = datetime(2026, 12, 3, 15, 55, 26).astimezone()


def make_event(
    elapsed_s: float,
    stage: str = ev.PROCESSING_SHEETS,
    message: str = "Processing",
    percentage: float = 50.0,
    kind: str = ev.PROGRESS,
    reported_elapsed_s: float | None = None,
) -> ProgressEvent:
    """Build an event ``elapsed_s`` after START, reporting ``reported_elapsed_s``."""
    return ProgressEvent(
        task_id="task-1",
        event=kind,
        stage=stage,
        message=message,
        progress_percentage=percentage,
        overall_percentage=0.0,
        processed=0,
        total=7109,
        failed=0,
        timestamp=(START + timedelta(seconds=elapsed_s)).isoformat(),
        elapsed_s=elapsed_s if reported_elapsed_s is None else reported_elapsed_s,
        status="STARTED",
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.4, "0s"),
        (43, "43s"),
        (43.9, "43s"),
        (42.99999, "43s"),
        (60, "1m 0s"),
        (138, "2m 18s"),
        (3725, "1h 2m 5s"),
        (-1, "0s"),
    ],
)
def test_format_elapsed(seconds: float, text: str) -> None:
    assert format_elapsed(seconds) == text


@pytest.mark.parametrize(
    ("hour", "minute", "second", "text"),
    [
        (15, 55, 26, "3:55:26 PM"),
        (0, 5, 0, "12:05:00 AM"),
        (12, 0, 9, "12:00:09 PM"),
        (9, 30, 0, "9:30:00 AM"),
    ],
)
def test_format_time_of_day(hour: int, minute: int, second: int, text: str) -> None:
    moment = datetime(2026, 12, 3, hour, minute, second)
    assert format_time_of_day(moment) == text


def test_row_shows_time_elapsed_activity_percentage() -> None:
    model = ActivityLogModel()
    model.append_event(make_event(0, message="Dispatching 7109 tasks", percentage=0))
    model.append_event(
        make_event(43, message="Processing: 324/7109 sheets completed", percentage=4.6)
    )

    cells = [model.index(1, column).data() for column in range(4)]
    assert cells[0] == "3:56:09 PM"
    assert cells[1] == "43s"
    assert cells[2] == "[Processing Sheets] Processing: 324/7109 sheets completed"
    assert cells[3] == "5%"


def test_row_elapsed_in_minutes() -> None:
    model = ActivityLogModel()
    model.append_event(make_event(0))
    model.append_event(make_event(138, message="All 7109 tasks completed (0 failed)"))

    assert model.log_row(1).elapsed == "2m 18s"
    assert model.log_row(1).time_of_day == "3:57:44 PM"


def test_stage_start_and_failure_show_no_percentage() -> None:
    model = ActivityLogModel()
    model.append_event(make_event(0, percentage=0))
    model.append_event(make_event(5, stage=ev.FAILED, percentage=0, kind=ev.ERROR))

    assert model.log_row(0).percentage == ""
    assert model.log_row(1).percentage == ""


def test_almost_done_stage_shows_99_percent() -> None:
    model = ActivityLogModel()
    model.append_event(make_event(0, percentage=99.7))
    model.append_event(make_event(1, percentage=100))

    assert model.log_row(0).percentage == "99%"
    assert model.log_row(1).percentage == "100%"


def test_elapsed_counts_from_task_start() -> None:
    model = ActivityLogModel()
    # The first event arrives 31 s into the task.
    model.append_event(make_event(31))
    # A failure event reports 0 s elapsed, but its timestamp is 64 s in.
    model.append_event(
        make_event(64, stage=ev.FAILED, kind=ev.ERROR, reported_elapsed_s=0.0)
    )

    assert model.log_row(0).elapsed == "31s"
    assert model.log_row(1).elapsed == "1m 4s"


def test_unreadable_timestamp_uses_elapsed_s() -> None:
    model = ActivityLogModel()
    event = make_event(12)
    model.append_event(replace(event, timestamp="not a time"))

    assert model.log_row(0).time_of_day == ""
    assert model.log_row(0).elapsed == "12s"


def test_model_roles() -> None:
    model = ActivityLogModel()
    event = make_event(0, stage=ev.COMPLETED, percentage=100, kind=ev.COMPLETE)
    model.append_event(event)

    index = model.index(0, 2)
    assert index.data(EVENT_ROLE) is event
    assert index.data(Qt.ItemDataRole.ToolTipRole) == "[Completed] Processing"
    assert index.data(Qt.ItemDataRole.ForegroundRole) is not None
    assert model.headerData(0, Qt.Orientation.Horizontal) == "Time"
    assert model.log_row(0).text() == "3:55:26 PM\t0s\t[Completed] Processing\t100%"


def test_model_passes_modeltester(qtmodeltester: ModelTester) -> None:
    model = ActivityLogModel()
    model.append_event(make_event(0, percentage=0))
    qtmodeltester.check(model)
    for second in range(1, 20):
        model.append_event(make_event(second))
    model.clear()
    model.append_event(make_event(0))

    assert model.rowCount() == 1


@pytest.fixture
def view(qtbot: QtBot) -> ActivityLogView:
    log = ActivityLogView(ActivityLogModel())
    qtbot.addWidget(log)
    log.resize(600, 200)
    log.show()
    qtbot.waitExposed(log)
    return log


def append_rows(view: ActivityLogView, first: int, count: int) -> None:
    model = view.model()
    assert isinstance(model, ActivityLogModel)
    for second in range(first, first + count):
        model.append_event(make_event(second, message=f"row {second}"))


def test_view_follows_new_rows(view: ActivityLogView, qtbot: QtBot) -> None:
    append_rows(view, 0, 60)
    bar = view.verticalScrollBar()

    qtbot.waitUntil(lambda: bar.maximum() > 0)
    assert view.is_following()
    assert bar.value() == bar.maximum()

    append_rows(view, 60, 10)
    qtbot.waitUntil(lambda: bar.value() == bar.maximum() and bar.maximum() > 0)
    assert view.is_following()


def test_view_stays_when_scrolled_up(view: ActivityLogView, qtbot: QtBot) -> None:
    append_rows(view, 0, 60)
    bar = view.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0)

    bar.setValue(bar.maximum() // 3)
    position = bar.value()
    old_maximum = bar.maximum()
    append_rows(view, 60, 20)
    qtbot.waitUntil(lambda: bar.maximum() > old_maximum)

    assert not view.is_following()
    assert bar.value() == position

    bar.setValue(bar.maximum())
    assert view.is_following()
    old_maximum = bar.maximum()
    append_rows(view, 80, 20)
    qtbot.waitUntil(lambda: bar.maximum() > old_maximum)
    assert bar.value() == bar.maximum()


def test_view_appends_a_thousand_rows_quickly(
    view: ActivityLogView, qtbot: QtBot
) -> None:
    started = time.perf_counter()
    for second in range(1000):
        append_rows(view, second, 1)
        if second % 10 == 0:
            qtbot.wait(0)
    elapsed_s = time.perf_counter() - started

    assert view.model().rowCount() == 1000
    # A loose bound: it catches a view that re-measures every row on each
    # append, whose cost grows with the square of the row count.
    assert elapsed_s < 5.0
    qtbot.waitUntil(lambda: view.verticalScrollBar().value() > 0)
    assert view.verticalScrollBar().value() == view.verticalScrollBar().maximum()
