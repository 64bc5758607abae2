"""Start the desktop application: QApplication, icons, database, main window.

Logging is configured by the command line before this runs.
"""

from __future__ import annotations

import argparse
import logging
import sys

# PySide6 is imported before anything that might import qasync: qasync binds
# to the first Qt binding it finds.
from PySide6.QtCore import QCoreApplication, QThreadPool
from PySide6.QtWidgets import QApplication

from omr_desktop import __version__
from omr_desktop.db.database import Database
from omr_desktop.gui.icons import icon, register_icon_search_path
from omr_desktop.gui.windows.main_window import MainWindow
from omr_desktop.gui.workers.db_task import DbTask

logger = logging.getLogger(__name__)

ORGANIZATION = "OMR Desktop"
APPLICATION = "OMR Desktop"


def create_application(argv: list[str] | None = None) -> QApplication:
    """Return the QApplication, creating it with the product's names and icons."""
    QCoreApplication.setOrganizationName(ORGANIZATION)
    QCoreApplication.setApplicationName(APPLICATION)
    QCoreApplication.setApplicationVersion(__version__)
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        app = QApplication(argv or sys.argv[:1])
    register_icon_search_path()
    app.setWindowIcon(icon("omr-desktop.svg"))
    return app


def open_database_in_background(window: MainWindow, database: Database) -> DbTask:
    """Open (and, if embedded, start) the database off the GUI thread.

    The window shows the result: the batch list, or a message saying why the
    database is unavailable.
    """

    def open_it() -> Database:
        database.open()
        return database

    task = DbTask(open_it)
    task.setAutoDelete(False)
    task.signals.finished.connect(window.set_database)
    task.signals.failed.connect(window.show_database_error)
    QThreadPool.globalInstance().start(task)
    return task


def run_gui(args: argparse.Namespace) -> int:
    """Open the main window and run the event loop; return the exit status."""
    app = create_application()
    database = Database()
    window = MainWindow()
    window.show()
    task = open_database_in_background(window, database)
    logger.info("OMR Desktop %s started", __version__)
    try:
        status = app.exec()
    finally:
        QThreadPool.globalInstance().waitForDone()
        del task
        database.close()
    logger.info("OMR Desktop exited with status %d", status)
    return int(status)
