"""The main window: batches (Panel A), students (Panel B), the sheet (Panel C)."""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import (
    QItemSelection,
    QModelIndex,
    QSettings,
    QSortFilterProxyModel,
    Qt,
    QThreadPool,
    Signal,
    Slot,
)
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QTableView,
    QToolButton,
)

from omr_desktop.db.database import Database
from omr_desktop.db.queries import BatchSummary, list_batches, list_sheets
from omr_desktop.gui.forms import load_form
from omr_desktop.gui.icons import icon
from omr_desktop.gui.models.list_models import batch_table_model
from omr_desktop.gui.models.record_table_model import RECORD_ROLE, SORT_ROLE
from omr_desktop.gui.models.sheet_table_model import SheetTableModel
from omr_desktop.gui.widgets.sheet_panel import SheetPanel
from omr_desktop.gui.workers.db_task import DbTaskRunner
from omr_desktop.gui.workers.sheet_loader import LoadedSheet, load_sheet

logger = logging.getLogger(__name__)

# Panel C with no sheet open: at start-up and after switching batches.
NO_SHEET_TITLE = "<b>No sheet open</b>"
NO_SHEET_MESSAGE = "Select a sheet in the student list."
NO_BATCH_MESSAGE = (
    "This database has no batches yet.\n\nCreate the demo batch with\n"
    "omr-desktop demo\nor read your scans with\n"
    "omr-desktop import --template T.json --images DIR --batch NAME"
)

# Flags offered by the student list's filter, most useful first.
FLAG_FILTERS = (
    "LOW_CONFIDENCE",
    "NEEDS_REVIEW",
    "MULTI_MARK",
    "BLANK_ANSWER",
    "ERASED_MARK",
    "BLANK_SHEET",
)


class MainWindow(QMainWindow):
    """The editor's window, built from ui/main_panels.ui.

    Signals:
        batches_loaded(int): the batch list was refreshed; carries its length.
        sheets_loaded(int): the student list was refreshed; carries its length.
        reprocess_requested(list): the Re-Process icon was clicked; carries
            the checked sheet ids in scan order.
        swap_requested(int, int): Swap was clicked for the two checked sheets.
        sheet_opened(int): Panel C shows this sheet id.
        swapped(): a swap was stored.
    """

    batches_loaded = Signal(int)
    sheets_loaded = Signal(int)
    reprocess_requested = Signal(list)
    swap_requested = Signal(int, int)
    sheet_opened = Signal(int)
    swapped = Signal()

    def __init__(self, pool: QThreadPool | None = None) -> None:
        super().__init__()
        if pool is None:
            # The reads behind clicks run one at a time on one thread, so
            # they share one connection (see Database.reused) instead of
            # authenticating a new one on each pool thread they land on.
            pool = QThreadPool(self)
            pool.setMaxThreadCount(1)
        self._pool = pool
        self._database: Database | None = None
        self._db_tasks = DbTaskRunner(self._pool, self._on_task_failed)
        self._open_sheet_id: int | None = None
        self.setWindowTitle("OMR Desktop")
        self.setWindowIcon(icon("omr-desktop.svg"))
        self._init_panels()
        self._init_batch_list()
        self._init_sheet_list()
        self._init_status_bar()
        self._restore_settings()

    # -- Building --------------------------------------------------------

    def _init_panels(self) -> None:
        panels = load_form("main_panels.ui", self)
        self.setCentralWidget(panels)
        self.splitter: QSplitter = self._child(QSplitter, "panelSplitter")
        self.batch_search: QLineEdit = self._child(QLineEdit, "batchSearch")
        self.batches_view: QTableView = self._child(QTableView, "batchesView")
        self.sheets_view: QTableView = self._child(QTableView, "sheetsView")
        self.sheets_title: QLabel = self._child(QLabel, "sheetsTitle")
        self.swap_button: QToolButton = self._child(QToolButton, "swapButton")
        self.swap_button.setIcon(icon("swap.svg"))
        self.reprocess_button: QToolButton = self._child(QToolButton, "reprocessButton")
        self.reprocess_button.setIcon(icon("reprocess.svg"))
        self.select_mode_button: QToolButton = self._child(
            QToolButton, "selectModeButton"
        )
        self.selected_count: QLabel = self._child(QLabel, "selectedCount")
        self.flag_filter: QComboBox = self._child(QComboBox, "flagFilter")
        self.splitter.setStretchFactor(2, 1)
        self.sheet_title: QLabel = self._child(QLabel, "sheetTitle")
        placeholder = self._child(QLabel, "sheetBody")
        self.sheet_panel = SheetPanel(self)
        panel_c = placeholder.parentWidget().layout()
        panel_c.replaceWidget(placeholder, self.sheet_panel)
        placeholder.deleteLater()
        self.sheet_panel.show_message(NO_SHEET_MESSAGE)
        self.sheet_panel.correction_requested.connect(self._on_correction_requested)

    def _child(self, kind: type[Any], name: str) -> Any:
        widget = self.findChild(kind, name)
        if widget is None:
            raise RuntimeError(f"ui/main_panels.ui lacks the {kind.__name__} {name!r}")
        return widget

    def _init_batch_list(self) -> None:
        self.batch_model = batch_table_model(self)
        self.batch_proxy = QSortFilterProxyModel(self)
        self.batch_proxy.setSourceModel(self.batch_model)
        self.batch_proxy.setSortRole(SORT_ROLE)
        self.batch_proxy.setFilterKeyColumn(0)
        self.batch_proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.batches_view.setModel(self.batch_proxy)
        self.batches_view.verticalHeader().hide()
        self.batch_search.textChanged.connect(self.batch_proxy.setFilterFixedString)
        self.batches_view.selectionModel().selectionChanged.connect(
            self._on_batches_view_selection_changed
        )

    def _init_sheet_list(self) -> None:
        self.sheet_model = SheetTableModel(self)
        self.sheets_view.setModel(self.sheet_model)
        self.sheets_view.verticalHeader().hide()
        # One text line per row: 10,000 sheets stay a short scroll.
        line = self.sheets_view.fontMetrics().height()
        self.sheets_view.verticalHeader().setDefaultSectionSize(line + 6)
        # Size columns from the first rows only: measuring all 10,000 rows
        # of a large batch took most of a second when it opened.
        self.sheets_view.horizontalHeader().setResizeContentsPrecision(200)
        self.sheets_view.verticalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.Fixed
        )
        # A scroll bar that appears when a long batch opens narrows the
        # viewport and makes Qt paint the list a second time.
        self.sheets_view.setVerticalScrollBarPolicy(
            Qt.ScrollBarPolicy.ScrollBarAlwaysOn
        )
        self._set_sheet_column_widths()
        self.flag_filter.addItem("All sheets", "")
        for flag in FLAG_FILTERS:
            self.flag_filter.addItem(flag.replace("_", " ").capitalize(), flag)
        self.flag_filter.currentIndexChanged.connect(self._on_flag_filter_changed)
        self.sheets_view.clicked.connect(self._on_sheets_view_clicked)
        self.sheets_view.selectionModel().currentRowChanged.connect(
            self._on_sheets_view_current_changed
        )
        self.select_mode_button.toggled.connect(self._on_select_mode_toggled)
        self.sheet_model.selection_changed.connect(self._on_selection_changed)
        self.reprocess_button.clicked.connect(self._on_reprocess_clicked)
        self.swap_button.clicked.connect(self._on_swap_clicked)
        self.swap_requested.connect(self.swap_checked)
        self._anchor_row: int | None = None
        self._init_shortcuts()

    def _set_sheet_column_widths(self) -> None:
        """Size the student list's columns once, from the font.

        Measuring the rows instead (resizeColumnsToContents, even on 200
        sampled rows) took 68 ms each time a 10,000-sheet batch opened.
        """
        char = self.sheets_view.fontMetrics().horizontalAdvance("0")
        # Characters per column: #, code, name, score, flags (icons), profile,
        # processed time.
        for column, chars in enumerate((7, 12, 20, 6, 12, 10, 17)):
            self.sheets_view.setColumnWidth(column, chars * char + 12)

    def _init_shortcuts(self) -> None:
        bindings = (
            ("Ctrl+Shift+S", self.select_mode_button.toggle),
            ("Ctrl+R", self._on_reprocess_clicked),
            ("Alt+Down", lambda: self._step_sheet(1)),
            ("Alt+Up", lambda: self._step_sheet(-1)),
        )
        for keys, action in bindings:
            QShortcut(QKeySequence(keys), self, action)
        select_all = QShortcut(
            QKeySequence.StandardKey.SelectAll,
            self.sheets_view,
            self.select_all_visible,
        )
        select_all.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)

    # -- Select mode -------------------------------------------------------

    @Slot(bool)
    def _on_select_mode_toggled(self, on: bool) -> None:
        self.sheet_model.set_select_mode(on)
        self._anchor_row = None
        # The check box needs room in the sequence column.
        self.sheets_view.resizeColumnToContents(0)

    @Slot(QModelIndex)
    def _on_sheets_view_clicked(self, index: QModelIndex) -> None:
        if not self.sheet_model.select_mode or not index.isValid():
            return
        row = index.row()
        shift = QApplication.keyboardModifiers() & Qt.KeyboardModifier.ShiftModifier
        if shift and self._anchor_row is not None:
            low, high = sorted((self._anchor_row, row))
            self.sheet_model.set_checked(
                self.sheet_model.visible_ids(low, high + 1), True
            )
        else:
            self.sheet_model.toggle(self._sheet_id_at(row))
            self._anchor_row = row

    def select_all_visible(self) -> None:
        """Check every sheet the filter shows (Ctrl+A in select mode)."""
        if self.sheet_model.select_mode:
            self.sheet_model.set_checked(self.sheet_model.visible_ids(), True)

    def _sheet_id_at(self, row: int) -> int:
        return self.sheet_model.record(row).id

    @Slot(int)
    def _on_selection_changed(self, count: int) -> None:
        select_mode = self.sheet_model.select_mode
        self.selected_count.setText(f"{count} selected" if select_mode else "")
        # The icon exists only while there is something to reprocess.
        self.reprocess_button.setVisible(select_mode and count >= 1)
        self.swap_button.setEnabled(select_mode and count == 2)

    @Slot()
    def _on_reprocess_clicked(self) -> None:
        ids = self.sheet_model.checked_ids()
        if self.sheet_model.select_mode and ids:
            self.reprocess_requested.emit(ids)

    @Slot()
    def _on_swap_clicked(self) -> None:
        ids = self.sheet_model.checked_ids()
        if self.sheet_model.select_mode and len(ids) == 2:
            self.swap_requested.emit(ids[0], ids[1])

    @Slot(int)
    def _on_flag_filter_changed(self, position: int) -> None:
        self.sheet_model.set_flag_filter(str(self.flag_filter.itemData(position) or ""))
        self._anchor_row = None

    def _step_sheet(self, step: int) -> None:
        current = self.sheets_view.currentIndex()
        row = (current.row() if current.isValid() else -1) + step
        if 0 <= row < self.sheet_model.rowCount():
            self.sheets_view.setCurrentIndex(self.sheet_model.index(row, 0))

    def _init_status_bar(self) -> None:
        self.database_label = QLabel("Starting the database…")
        self.statusBar().addPermanentWidget(self.database_label)

    # -- Database --------------------------------------------------------

    def set_database(self, database: Database) -> None:
        """Use the opened ``database`` and load the batch list."""
        self._database = database
        self.database_label.setText(database.location().describe())
        self.refresh_batches()

    def show_database_error(self, message: str) -> None:
        self.database_label.setText("No database")
        QMessageBox.critical(self, "Database unavailable", message)

    def refresh_batches(self) -> None:
        database = self._database
        if database is None:
            return

        def load() -> list[BatchSummary]:
            with database.reused() as conn:
                return list_batches(conn)

        self._db_tasks.run(load, self._on_batches_loaded)

    @Slot(object)
    def _on_batches_loaded(self, batches: list[BatchSummary]) -> None:
        self.batch_model.set_records(batches)
        self.batches_view.resizeColumnsToContents()
        if not batches:
            self.sheet_panel.show_message(NO_BATCH_MESSAGE)
        self._select_batch(QSettings().value("main_window/last_batch_id"))
        self.batches_loaded.emit(len(batches))

    def _select_batch(self, batch_id: object) -> None:
        for row in range(self.batch_proxy.rowCount()):
            index = self.batch_proxy.index(row, 0)
            if str(index.data(RECORD_ROLE).id) == str(batch_id):
                self.batches_view.selectRow(row)
                return

    @Slot(QItemSelection, QItemSelection)
    def _on_batches_view_selection_changed(
        self, selected: QItemSelection, deselected: QItemSelection
    ) -> None:
        rows = self.batches_view.selectionModel().selectedRows()
        if not rows or self._database is None:
            return
        batch: BatchSummary = rows[0].data(RECORD_ROLE)
        QSettings().setValue("main_window/last_batch_id", batch.id)
        self.sheets_title.setText(f"<b>Students</b> — {batch.name}")
        self._load_sheets(batch)

    def _load_sheets(self, batch: BatchSummary) -> None:
        database = self._database
        if database is None:
            return

        def load() -> list[Any]:
            with database.reused() as conn:
                return list_sheets(conn, batch.id)

        self._db_tasks.run(load, self._on_sheets_loaded)

    @Slot(object)
    def _on_sheets_loaded(self, sheets: list[Any]) -> None:
        self.sheet_model.set_records(sheets)
        self.sheets_loaded.emit(len(sheets))
        if self._open_sheet_id is None:
            return
        # A refresh reloads the open sheet; another batch closes it.
        if any(sheet.id == self._open_sheet_id for sheet in sheets):
            self.open_sheet(self._open_sheet_id)
        else:
            self.close_sheet()

    def close_sheet(self) -> None:
        """Empty Panel C, as at start-up."""
        self._open_sheet_id = None
        self.sheet_title.setText(NO_SHEET_TITLE)
        self.sheet_panel.show_message(NO_SHEET_MESSAGE)

    def refresh_sheets(self) -> None:
        """Reload the student list of the open batch and the open sheet."""
        rows = self.batches_view.selectionModel().selectedRows()
        if rows:
            self._load_sheets(rows[0].data(RECORD_ROLE))

    # -- Panel C -----------------------------------------------------------

    @Slot(QModelIndex, QModelIndex)
    def _on_sheets_view_current_changed(
        self, current: QModelIndex, previous: QModelIndex
    ) -> None:
        if current.isValid():
            self.open_sheet(self._sheet_id_at(current.row()))

    @property
    def open_sheet_id(self) -> int | None:
        return self._open_sheet_id

    @property
    def open_sheet_profile_id(self) -> int | None:
        """The profile the open sheet was last read with (the dialog preselects it)."""
        detail = self.sheet_panel.detail
        return None if detail is None else detail.profile_id

    def open_sheet(self, sheet_id: int) -> None:
        """Load ``sheet_id`` into Panel C off the GUI thread."""
        database = self._database
        if database is None:
            return
        self._open_sheet_id = sheet_id
        self._db_tasks.run(
            lambda: load_sheet(database, sheet_id), self._on_sheet_loaded
        )

    @Slot(object)
    def _on_sheet_loaded(self, loaded: LoadedSheet | None) -> None:
        if loaded is None or loaded.detail.id != self._open_sheet_id:
            return
        detail = loaded.detail
        score = "" if detail.score is None else f", score {detail.score.normalize():f}"
        self.sheet_title.setText(
            f"<b>Sheet {detail.sequence_no}</b> — {detail.student_code} "
            f"{detail.student_name}{score}"
        )
        self.sheet_panel.show_detail(
            detail, loaded.image, loaded.overlays, loaded.decision
        )
        self.sheet_opened.emit(detail.id)

    @Slot(str, str)
    def _on_correction_requested(self, question: str, answer: str) -> None:
        database, sheet_id = self._database, self._open_sheet_id
        if database is None or sheet_id is None:
            return
        editor = self.editor_name()

        def store() -> int:
            from omr_desktop.db.corrections import correct_answer

            with database.reused() as conn:
                correct_answer(conn, sheet_id, question, answer, editor)
            return sheet_id

        self._db_tasks.run(
            store, lambda _id: self.refresh_sheets(), self._on_correction_refused
        )

    def _on_correction_refused(self, message: str) -> None:
        # The cell shows the stored answer again, so the reason must be seen.
        QMessageBox.warning(self, "Correction not saved", message)

    def editor_name(self) -> str:
        """Return the editor recorded on corrections: the setting, else the OS user."""
        name = QSettings().value("editor/name")
        if name:
            return str(name)
        import getpass

        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return "editor"

    def swap_checked(self, first: int, second: int) -> None:
        """Exchange the students of two sheets, then refresh the list."""
        database = self._database
        if database is None:
            return

        def swap() -> None:
            from omr_desktop.db.corrections import swap_students

            with database.reused() as conn:
                swap_students(conn, first, second)

        self._db_tasks.run(swap, lambda _r: self._on_swapped())

    def _on_swapped(self) -> None:
        self.statusBar().showMessage("Students swapped; both sheets rescored.", 8000)
        self.swapped.emit()
        self.refresh_sheets()

    @Slot(str)
    def _on_task_failed(self, message: str) -> None:
        self.statusBar().showMessage(message, 15000)

    # -- Settings ----------------------------------------------------------

    def _restore_settings(self) -> None:
        settings = QSettings()
        geometry = settings.value("main_window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 800)
        splitter = settings.value("main_window/splitter")
        if splitter is not None:
            self.splitter.restoreState(splitter)
        else:
            # Panel C gets the most room, for the page and its answers table.
            self.splitter.setSizes([200, 430, 650])

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        settings = QSettings()
        settings.setValue("main_window/geometry", self.saveGeometry())
        settings.setValue("main_window/splitter", self.splitter.saveState())
        super().closeEvent(event)
