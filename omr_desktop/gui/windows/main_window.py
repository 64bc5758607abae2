"""The main window: batches (Panel A), students (Panel B), the sheet (Panel C)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import (
    QItemSelection,
    QSettings,
    QSortFilterProxyModel,
    Qt,
    QThreadPool,
    Signal,
    Slot,
)
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
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
from omr_desktop.gui.models.list_models import batch_table_model, sheet_table_model
from omr_desktop.gui.models.record_table_model import RECORD_ROLE, SORT_ROLE
from omr_desktop.gui.workers.db_task import DbTask

logger = logging.getLogger(__name__)


class MainWindow(QMainWindow):
    """The editor's window, built from ui/main_panels.ui.

    Signals:
        batches_loaded(int): the batch list was refreshed; carries its length.
        sheets_loaded(int): the student list was refreshed; carries its length.
    """

    batches_loaded = Signal(int)
    sheets_loaded = Signal(int)

    def __init__(self, pool: QThreadPool | None = None) -> None:
        super().__init__()
        self._pool = pool or QThreadPool.globalInstance()
        self._database: Database | None = None
        self._tasks: set[DbTask] = set()
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
        self.splitter.setStretchFactor(2, 1)

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
        self.sheet_model = sheet_table_model(self)
        self.sheets_view.setModel(self.sheet_model)
        self.sheets_view.verticalHeader().hide()
        # One text line per row: 10,000 sheets stay a short scroll.
        line = self.sheets_view.fontMetrics().height()
        self.sheets_view.verticalHeader().setDefaultSectionSize(line + 6)

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
            with database.connect() as conn:
                return list_batches(conn)

        self._run(load, self._on_batches_loaded)

    @Slot(object)
    def _on_batches_loaded(self, batches: list[BatchSummary]) -> None:
        self.batch_model.set_records(batches)
        self.batches_view.resizeColumnsToContents()
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
        database = self._database

        def load() -> list[Any]:
            with database.connect() as conn:
                return list_sheets(conn, batch.id)

        self._run(load, self._on_sheets_loaded)

    @Slot(object)
    def _on_sheets_loaded(self, sheets: list[Any]) -> None:
        self.sheet_model.set_records(sheets)
        self.sheets_view.resizeColumnsToContents()
        self.sheets_loaded.emit(len(sheets))

    def _run(self, function: Callable[[], Any], on_done: Callable[[Any], None]) -> None:
        task = DbTask(function)
        self._tasks.add(task)
        task.signals.finished.connect(on_done)
        task.signals.failed.connect(self._on_task_failed)
        task.signals.finished.connect(lambda _r: self._tasks.discard(task))
        task.signals.failed.connect(lambda _m: self._tasks.discard(task))
        task.setAutoDelete(False)
        self._pool.start(task)

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
            self.splitter.setSizes([260, 520, 500])

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        settings = QSettings()
        settings.setValue("main_window/geometry", self.saveGeometry())
        settings.setValue("main_window/splitter", self.splitter.saveState())
        super().closeEvent(event)
