"""The profile dialog: the list, the choice it returns, the preview."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import pytest
from PySide6.QtCore import Qt, QThreadPool
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTableView,
)
from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

from omr_desktop.db.profiles import ProfileInfo, list_profiles
from omr_desktop.gui.dialogs.profile_dialog import PreviewResult, ProfileDialog
from omr_desktop.gui.models.profile_list_model import (
    PROFILE_ID_ROLE,
    ProfileListModel,
)

pytestmark = pytest.mark.gui

PROFILES = [
    ProfileInfo(
        1,
        "Default",
        "Solid pen or pencil marks.",
        True,
        {
            "decision": {
                "min_fill": 0.45,
                "min_jump": 0.2,
                "review_threshold": 0.9,
                "multi_mark_policy": "darkest",
            }
        },
    ),
    ProfileInfo(
        2,
        "Sensitive",
        "Also reads light pencil marks.",
        True,
        {
            "decision": {
                "min_fill": 0.215,
                "min_jump": 0.05,
                "review_threshold": 0.5,
                "multi_mark_policy": "darkest",
            }
        },
    ),
    ProfileInfo(100, "Room 4 scanner", "", False, {}),
]

FIXED_PREVIEW = PreviewResult("Sheet 42 (S-0042)", [("q12", "", "B")])


def make_dialog(
    qtbot: QtBot,
    current: int | None = 1,
    sheets: int = 12,
    preview: Callable[[int], PreviewResult] | None = None,
) -> ProfileDialog:
    dialog = ProfileDialog(PROFILES, current, sheets, preview)
    qtbot.addWidget(dialog)
    dialog.open()
    return dialog


def reprocess_button(dialog: ProfileDialog) -> QPushButton:
    button = dialog.findChild(QPushButton, "reprocessButton")
    assert button is not None
    return button


def cancel_button(dialog: ProfileDialog) -> QPushButton:
    box = dialog.findChild(QDialogButtonBox, "buttonBox")
    assert box is not None
    return box.button(QDialogButtonBox.StandardButton.Cancel)


def select_row(dialog: ProfileDialog, row: int) -> None:
    view = dialog.findChild(QTableView, "profilesView")
    assert view is not None
    view.selectRow(row)


def preview_status(dialog: ProfileDialog) -> str:
    label = dialog.findChild(QLabel, "previewStatus")
    assert label is not None
    return label.text()


def preview_changes(dialog: ProfileDialog) -> QPlainTextEdit:
    changes = dialog.findChild(QPlainTextEdit, "previewChanges")
    assert changes is not None
    return changes


@pytest.mark.db
def test_list_profiles_returns_builtins(db: psycopg.Connection) -> None:
    profiles = list_profiles(db)

    assert [p.name for p in profiles] == ["Default", "Sensitive", "Strict"]
    assert [p.id for p in profiles] == [1, 2, 3]
    assert all(p.builtin for p in profiles)
    assert profiles[0].settings["decision"]["min_fill"] == 0.45
    assert profiles[1].description.startswith("Also reads light pencil marks")


def test_profile_model_shows_key_settings() -> None:
    model = ProfileListModel()
    model.set_profiles(PROFILES)

    row = [model.index(1, column).data() for column in range(model.columnCount())]
    assert row == [
        "Sensitive (built-in)",
        "Also reads light pencil marks.",
        "0.215",
        "0.05",
        "0.5",
        "Darkest wins",
    ]
    assert model.index(2, 0).data() == "Room 4 scanner"
    assert model.index(2, 2).data() == "—"
    assert model.index(2, 3).data(PROFILE_ID_ROLE) == 100
    assert model.row_of(100) == 2
    assert model.row_of(7) is None
    assert model.headerData(2, Qt.Orientation.Horizontal) == "Min fill"


def test_profile_model_passes_modeltester(qtmodeltester: ModelTester) -> None:
    model = ProfileListModel()
    model.set_profiles(PROFILES)
    qtmodeltester.check(model)
    model.set_profiles(PROFILES[:1])

    assert model.rowCount() == 1


def test_current_profile_is_preselected(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot, current=2)

    reprocess_button(dialog).click()

    assert dialog.result() == QDialog.DialogCode.Accepted
    assert dialog.chosen_profile_id() == 2


def test_other_profile_is_returned(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot, current=1)

    select_row(dialog, 2)
    reprocess_button(dialog).click()

    assert dialog.chosen_profile_id() == 100


def test_cancel_returns_none(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot, current=1)

    cancel_button(dialog).click()

    assert dialog.result() == QDialog.DialogCode.Rejected
    assert dialog.chosen_profile_id() is None


def test_no_choice_before_closing(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot, current=1)

    assert dialog.isVisible()
    assert dialog.chosen_profile_id() is None


@pytest.mark.parametrize(
    ("sheets", "text"),
    [
        (12, "Re-Process 12 sheets"),
        (1, "Re-Process 1 sheet"),
        (7109, "Re-Process 7,109 sheets"),
    ],
)
def test_button_shows_sheet_count(qtbot: QtBot, sheets: int, text: str) -> None:
    dialog = make_dialog(qtbot, sheets=sheets)

    assert reprocess_button(dialog).text() == text


def test_reprocess_disabled_until_chosen(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot, current=None)
    button = reprocess_button(dialog)

    assert not button.isEnabled()
    dialog.accept()
    assert dialog.isVisible()

    select_row(dialog, 1)
    assert button.isEnabled()
    button.click()
    assert dialog.chosen_profile_id() == 2


def test_unknown_current_profile_selects_nothing(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot, current=55)

    assert not reprocess_button(dialog).isEnabled()


def test_zero_sheets_rejected() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ProfileDialog(PROFILES, 1, 0)


def test_preview_shows_changes(qtbot: QtBot) -> None:
    calls: list[tuple[int, bool]] = []

    def preview(profile_id: int) -> PreviewResult:
        on_gui_thread = threading.current_thread() is threading.main_thread()
        calls.append((profile_id, on_gui_thread))
        return FIXED_PREVIEW

    dialog = ProfileDialog(PROFILES, 1, 12, preview)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.preview_shown, timeout=5000) as shown:
        dialog.open()

    assert shown.args == [FIXED_PREVIEW]
    assert calls == [(1, False)]
    assert preview_status(dialog) == "Sheet 42 (S-0042): this profile changes 1 answer."
    assert preview_changes(dialog).toPlainText() == "q12: '' → 'B'"

    with qtbot.waitSignal(dialog.preview_shown, timeout=5000):
        select_row(dialog, 1)
    assert calls[-1] == (2, False)


def test_preview_counts_changes(qtbot: QtBot) -> None:
    result = PreviewResult("Sheet 7", [("q1", "A", "B"), ("q2", "", "C")])
    dialog = ProfileDialog(PROFILES, 2, 3, lambda _profile_id: result)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.preview_shown, timeout=5000):
        dialog.open()

    assert preview_status(dialog) == "Sheet 7: this profile changes 2 answers."
    assert preview_changes(dialog).toPlainText() == "q1: 'A' → 'B'\nq2: '' → 'C'"


def test_preview_without_changes(qtbot: QtBot) -> None:
    result = PreviewResult("Sheet 7", [])
    dialog = ProfileDialog(PROFILES, 2, 3, lambda _profile_id: result)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.preview_shown, timeout=5000):
        dialog.open()

    assert preview_status(dialog) == "Sheet 7: this profile changes no answers."
    assert preview_changes(dialog).isHidden()


def test_preview_computing_state(qtbot: QtBot) -> None:
    release = threading.Event()

    def preview(_profile_id: int) -> PreviewResult:
        release.wait(5)
        return FIXED_PREVIEW

    dialog = ProfileDialog(PROFILES, 2, 12, preview)
    qtbot.addWidget(dialog)
    dialog.open()

    assert preview_status(dialog) == "Computing the preview with Sensitive…"
    with qtbot.waitSignal(dialog.preview_shown, timeout=5000):
        release.set()
    assert "changes 1 answer" in preview_status(dialog)


def test_preview_error_is_shown(qtbot: QtBot) -> None:
    def preview(_profile_id: int) -> PreviewResult:
        raise FileNotFoundError("sheet image scans/0042.png not found")

    dialog = ProfileDialog(PROFILES, 1, 12, preview)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.preview_failed, timeout=5000) as failed:
        dialog.open()

    assert failed.args == ["sheet image scans/0042.png not found"]
    assert (
        preview_status(dialog)
        == "The preview failed: sheet image scans/0042.png not found"
    )


def test_late_preview_of_left_profile_dropped(qtbot: QtBot) -> None:
    release_first = threading.Event()

    def preview(profile_id: int) -> PreviewResult:
        if profile_id == 1:
            release_first.wait(5)
            return PreviewResult("Sheet 42", [("q1", "", "A")])
        return PreviewResult("Sheet 42", [("q2", "", "B")])

    dialog = ProfileDialog(PROFILES, 1, 12, preview)
    qtbot.addWidget(dialog)
    dialog.open()
    with qtbot.waitSignal(dialog.preview_shown, timeout=5000) as shown:
        select_row(dialog, 1)
    assert shown.args[0].changes == [("q2", "", "B")]

    release_first.set()
    assert QThreadPool.globalInstance().waitForDone(5000)
    qtbot.wait(50)
    assert preview_changes(dialog).toPlainText() == "q2: '' → 'B'"


def test_no_preview_without_open_sheet(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot, preview=None)

    assert "Open a sheet" in preview_status(dialog)
    assert preview_changes(dialog).isHidden()


def test_double_click_chooses_profile(qtbot: QtBot) -> None:
    dialog = make_dialog(qtbot, current=1)
    view = dialog.findChild(QTableView, "profilesView")
    assert view is not None
    index = view.model().index(1, 0)
    select_row(dialog, 1)

    view.doubleClicked.emit(index)

    assert dialog.chosen_profile_id() == 2
