"""Select mode in the student list and the Re-Process icon in Panel C's header."""

from __future__ import annotations

from decimal import Decimal

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QToolButton
from pytestqt.qtbot import QtBot

from omr_desktop.db.queries import SheetSummary
from omr_desktop.gui.windows.main_window import MainWindow

pytestmark = pytest.mark.gui


def sheets(count: int) -> list[SheetSummary]:
    flags = ((), ("LOW_CONFIDENCE",), ("MULTI_MARK", "NEEDS_REVIEW"))
    return [
        SheetSummary(
            100 + n,
            n,
            f"R{n}",
            f"Student {n}",
            Decimal(n),
            flags[n % 3],
            "Default",
            "2026-01-01 00:00",
        )
        for n in range(1, count + 1)
    ]


@pytest.fixture
def window(qtbot: QtBot) -> MainWindow:
    main = MainWindow()
    qtbot.addWidget(main)
    main.show()
    main.sheet_model.set_records(sheets(10))
    return main


def click_row(
    qtbot: QtBot,
    window: MainWindow,
    row: int,
    modifier: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier,
) -> None:
    view = window.sheets_view
    rect = view.visualRect(view.model().index(row, 1))
    qtbot.mouseClick(
        view.viewport(), Qt.MouseButton.LeftButton, modifier, rect.center()
    )


def header_buttons(window: MainWindow) -> list[str]:
    header = window.findChild(QHBoxLayout, "panelCHeader")
    assert header is not None
    names = []
    for i in range(header.count()):
        widget = header.itemAt(i).widget()
        if isinstance(widget, QToolButton):
            names.append(widget.objectName())
    return names


def test_reprocess_icon_stands_before_swap(window: MainWindow) -> None:
    assert header_buttons(window) == ["reprocessButton", "swapButton"]
    assert window.reprocess_button.icon().isNull() is False
    assert window.reprocess_button.accessibleName() == "Re-Process"
    assert "Re-Process" in window.reprocess_button.toolTip()


def test_icon_hidden_until_selection_in_select_mode(
    window: MainWindow, qtbot: QtBot
) -> None:
    assert not window.reprocess_button.isVisible()

    window.select_mode_button.setChecked(True)
    assert not window.reprocess_button.isVisible()

    click_row(qtbot, window, 0)
    assert window.reprocess_button.isVisible()
    reprocess = window.reprocess_button.geometry()
    assert reprocess.right() < window.swap_button.geometry().left()

    click_row(qtbot, window, 0)
    assert not window.reprocess_button.isVisible()


def test_leaving_select_mode_clears_selection(window: MainWindow, qtbot: QtBot) -> None:
    window.select_mode_button.setChecked(True)
    click_row(qtbot, window, 1)
    click_row(qtbot, window, 2)
    assert window.selected_count.text() == "2 selected"

    window.select_mode_button.setChecked(False)

    assert window.sheet_model.checked_ids() == []
    assert not window.reprocess_button.isVisible()
    assert window.selected_count.text() == ""
    window.select_mode_button.setChecked(True)
    assert window.sheet_model.checked_ids() == []


def test_clicks_outside_select_mode_select_nothing(
    window: MainWindow, qtbot: QtBot
) -> None:
    click_row(qtbot, window, 3)

    assert window.sheet_model.checked_ids() == []
    assert (
        window.sheet_model.data(
            window.sheet_model.index(3, 0), Qt.ItemDataRole.CheckStateRole
        )
        is None
    )


def test_shift_click_checks_range(window: MainWindow, qtbot: QtBot) -> None:
    window.select_mode_button.setChecked(True)

    click_row(qtbot, window, 2)
    click_row(qtbot, window, 6, Qt.KeyboardModifier.ShiftModifier)

    assert window.sheet_model.checked_ids() == [103, 104, 105, 106, 107]
    assert window.selected_count.text() == "5 selected"


def test_ctrl_a_checks_all_visible_rows(window: MainWindow, qtbot: QtBot) -> None:
    window.select_mode_button.setChecked(True)
    window.flag_filter.setCurrentIndex(window.flag_filter.findData("LOW_CONFIDENCE"))
    window.sheets_view.setFocus()

    qtbot.keyClick(
        window.sheets_view, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier
    )

    assert window.sheet_model.checked_ids() == [101, 104, 107, 110]


def test_swap_enabled_for_exactly_two(window: MainWindow, qtbot: QtBot) -> None:
    window.select_mode_button.setChecked(True)
    states = []
    for row in range(3):
        click_row(qtbot, window, row)
        states.append(window.swap_button.isEnabled())

    assert states == [False, True, False]


def test_reprocess_click_emits_checked_ids(window: MainWindow, qtbot: QtBot) -> None:
    window.select_mode_button.setChecked(True)
    click_row(qtbot, window, 4)
    click_row(qtbot, window, 1)

    with qtbot.waitSignal(window.reprocess_requested, timeout=2000) as emitted:
        qtbot.mouseClick(window.reprocess_button, Qt.MouseButton.LeftButton)

    assert emitted.args == [[102, 105]]


def test_sheet_list_stays_fast_with_10000_rows(window: MainWindow) -> None:
    window.sheet_model.set_records(sheets(10_000))
    window.select_mode_button.setChecked(True)

    window.select_all_visible()

    assert len(window.sheet_model.checked_ids()) == 10_000
    assert window.selected_count.text() == "10000 selected"
