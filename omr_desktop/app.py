"""Start the desktop application: QApplication, icons, database, main window.

Logging is configured by the command line before this runs.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# PySide6 is imported before anything that might import qasync: qasync binds
# to the first Qt binding it finds.
from PySide6.QtCore import QCoreApplication, Qt, QThreadPool
from PySide6.QtWidgets import QApplication, QMessageBox

from omr_desktop import __version__, config
from omr_desktop.db.database import Database
from omr_desktop.engine_setup import (
    EngineSetup,
    close_engine,
    cluster_event_source,
    make_engine,
)
from omr_desktop.gui import garbage_collector
from omr_desktop.gui.icons import icon, register_icon_search_path
from omr_desktop.gui.reprocess_flow import ReprocessFlow
from omr_desktop.gui.widgets.tasks_panel import TasksPanel
from omr_desktop.gui.windows.main_window import MainWindow
from omr_desktop.gui.workers.db_task import DbTask, DbTaskRunner
from omr_desktop.gui.workers.qt_executor import QThreadPoolExecutor
from omr_desktop.pipeline.task_manager import TaskManager, TaskRequestError
from omr_desktop.plural import counted

if TYPE_CHECKING:
    from omr_desktop.db.history_store import UndoCandidate

logger = logging.getLogger(__name__)

ORGANIZATION = "OMR Desktop"
APPLICATION = "OMR Desktop"


def create_application(argv: list[str] | None = None) -> QApplication:
    """Return the QApplication, creating it with the product's names and icons.

    From then on garbage cycles are collected on the GUI thread only
    (`omr_desktop.gui.garbage_collector`).
    """
    QCoreApplication.setOrganizationName(ORGANIZATION)
    QCoreApplication.setApplicationName(APPLICATION)
    QCoreApplication.setApplicationVersion(__version__)
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        app = QApplication(argv or sys.argv[:1])
    register_icon_search_path()
    app.setWindowIcon(icon("omr-desktop.svg"))
    garbage_collector.install(app)
    return app


class AppSession:
    """The services the application runs once its database is open.

    Attributes:
        executor: detection threads (a QThreadPool; the size is the
            ``detection/threads`` setting, default the number of cores).
        manager: the reprocess queue.
        flow: the Re-Process workflow of the main window.
    """

    def __init__(
        self, window: MainWindow, database: Database, threads: int | None = None
    ) -> None:
        threads = threads or detection_threads()
        self.window = window
        self.database = database
        self.executor = QThreadPoolExecutor(threads)
        self._threads = threads
        self.engine_message: QMessageBox | None = None
        setup = self._make_engine(saved_engine_choice())
        self.manager = TaskManager(database, engine=setup.engine)
        self.flow = ReprocessFlow(database, self.manager, window, parent=window)
        window.reprocess_requested.connect(self._on_window_reprocess_requested)
        self.tasks_panel = TasksPanel(window)
        window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.tasks_panel)
        self.tasks_panel.hide()
        self.flow.event_received.connect(self.tasks_panel.add_event)
        self.tasks_panel.set_database(database)
        self._init_menus()
        self._db_tasks = DbTaskRunner()
        self._show_engine(setup)

    def _init_menus(self) -> None:
        menu_bar = self.window.menuBar()
        reprocess = menu_bar.addMenu("&Reprocess")
        undo = reprocess.addAction("&Undo last reprocess")
        undo.setShortcut("Ctrl+Shift+Z")
        undo.triggered.connect(self.undo_last_reprocess)
        engine = reprocess.addAction("&Engine...")
        engine.triggered.connect(self.change_engine)
        view = menu_bar.addMenu("&View")
        tasks = self.tasks_panel.toggleViewAction()
        tasks.setShortcut("Ctrl+T")
        view.addAction(tasks)

    def _make_engine(self, choice: config.EngineChoice | str) -> EngineSetup:
        if isinstance(choice, str):
            # An invalid saved setting: run locally and say why.
            local = config.EngineChoice(config.ENGINE_LOCAL, None)
            setup = make_engine(local, self.database, self.executor, self._threads)
            return EngineSetup(setup.engine, setup.description, choice)
        return make_engine(choice, self.database, self.executor, self._threads)

    def _show_engine(self, setup: EngineSetup) -> None:
        self.window.statusBar().showMessage(
            f"Reprocess engine: {setup.description}", 10_000
        )
        if setup.fallback_reason is None:
            return
        box = QMessageBox(
            QMessageBox.Icon.Warning,
            "Cluster engine unavailable",
            f"{setup.fallback_reason}\n\nReprocesses run on this "
            "workstation's threads (the local engine) until the cluster is "
            "reachable. Reprocess > Engine... changes the engine.",
            QMessageBox.StandardButton.Ok,
            self.window,
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        # Non-blocking: the window stays usable with the local engine.
        box.open()
        self.engine_message = box

    def change_engine(self) -> None:
        """Ask for the engine, switch to it and save it as the setting."""
        from omr_desktop.gui.dialogs.engine_dialog import EngineDialog

        current = saved_engine_choice()
        if isinstance(current, str):
            current = config.EngineChoice(config.ENGINE_LOCAL, None)
        dialog = EngineDialog(current, self.window)
        if dialog.exec() != EngineDialog.DialogCode.Accepted:
            return
        self.apply_engine_choice(dialog.choice())

    def apply_engine_choice(self, choice: config.EngineChoice) -> EngineSetup | None:
        """Switch later tasks to ``choice`` and save it; None if a task is active."""
        setup = self._make_engine(choice)
        previous = self.manager.engine
        try:
            self.manager.set_engine(setup.engine)
        except TaskRequestError as exc:
            close_engine(setup.engine)
            QMessageBox.warning(self.window, "Reprocess engine", str(exc))
            return None
        close_engine(previous)
        config.save_engine_choice(choice)
        self._show_engine(setup)
        return setup

    def undo_last_reprocess(self) -> None:
        """Offer to undo the newest reprocess that succeeded and is not undone yet.

        The question names the task (it may be another instance's), and
        nothing changes until the editor confirms.
        """
        database = self.database

        def find() -> UndoCandidate | None:
            from omr_desktop.db.history_store import last_undoable

            with database.connect() as conn:
                return last_undoable(conn)

        self._db_tasks.run(find, self._confirm_undo, self._show_undo_error)

    def _confirm_undo(self, candidate: UndoCandidate | None) -> None:
        if candidate is None:
            QMessageBox.information(
                self.window, "Undo", "There is no reprocess to undo."
            )
            return
        finished = candidate.finished_at.astimezone().strftime("%Y-%m-%d %H:%M")
        answer = QMessageBox.question(
            self.window,
            "Undo the last reprocess?",
            f"Undo the reprocess of {counted(candidate.sheets, 'sheet')} in "
            f"{candidate.batch_names or 'deleted batches'} with "
            f"{candidate.profile_name}, finished {finished} (task "
            f"{candidate.task_id[:8]})? Their answers, scores and flags go "
            "back to what they were before it.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        database = self.database
        task_id = candidate.task_id

        def undo() -> str:
            from omr_desktop.db.history_store import undo_task

            with database.connect() as conn:
                result = undo_task(conn, task_id)
            return (
                f"Undid task {result.task_id[:8]}: "
                f"{counted(result.sheets_restored, 'sheet')} restored."
            )

        self._db_tasks.run(undo, self._on_undo_finished, self._show_undo_error)

    def _show_undo_error(self, message: str) -> None:
        QMessageBox.warning(self.window, "Undo", message)

    def _on_undo_finished(self, message: str) -> None:
        self.window.statusBar().showMessage(message, 10_000)
        self.window.refresh_sheets()

    def _on_window_reprocess_requested(self, sheet_ids: list[int]) -> None:
        self.flow.start(
            sheet_ids, self.window.open_sheet_id, self.window.open_sheet_profile_id
        )

    def close(self) -> None:
        """Cancel running tasks and wait for their threads; safe to call twice."""
        self.flow.close()
        self.manager.shutdown(cancel=True)
        close_engine(self.manager.engine)
        self.executor.shutdown(wait=True, cancel_futures=True)


def saved_engine_choice() -> config.EngineChoice | str:
    """Return the engine setting, or the reason it is invalid."""
    try:
        return config.engine_choice()
    except config.ConfigError as exc:
        return str(exc)


def detection_threads() -> int:
    """Return the detection thread count: the saved setting, else the core count."""
    import os

    from PySide6.QtCore import QSettings

    value = QSettings().value("detection/threads")
    try:
        threads = int(value) if value is not None else 0
    except (TypeError, ValueError):
        threads = 0
    return threads if threads > 0 else (os.cpu_count() or 2)


def freeze_startup_objects() -> None:
    """Exempt every object alive after start-up from garbage collection.

    Qt, numpy, OpenCV and the window leave a few hundred thousand objects
    that live as long as the application. Each full collection walked them
    all on the GUI thread: about 60 ms, once in the first open of a
    10,000-sheet batch. ``gc.freeze`` moves them to a permanent generation;
    objects made later are collected as before.
    """
    gc.collect()
    gc.freeze()


def open_database_in_background(
    window: MainWindow,
    database: Database,
    sessions: list[AppSession],
    on_session: Callable[[AppSession], None] | None = None,
) -> DbTask:
    """Open (and, if embedded, start) the database off the GUI thread.

    The window shows the result: the batch list, or a message saying why the
    database is unavailable. On success an AppSession is appended to
    ``sessions`` and passed to ``on_session``.
    """

    def open_it() -> Database:
        database.open()
        return database

    def opened(result: Database) -> None:
        session = AppSession(window, result)
        sessions.append(session)
        freeze_startup_objects()
        window.set_database(result)
        if on_session is not None:
            on_session(session)

    task = DbTask(open_it)
    task.setAutoDelete(False)
    task.signals.finished.connect(opened)
    task.signals.failed.connect(window.show_database_error)
    QThreadPool.globalInstance().start(task)
    return task


def run_gui(args: argparse.Namespace) -> int:
    """Open the main window and run the event loop; return the exit status."""
    serve = getattr(args, "serve", None)
    address = None
    if serve:
        from omr_desktop.server.app import parse_address

        try:
            address = parse_address(serve)
        except ValueError as exc:
            print(f"error: --serve {serve!r}: {exc}", file=sys.stderr)
            return 2
    app = create_application()
    stop_on_signals(app)
    database = Database()
    window = MainWindow()
    window.show()
    sessions: list[AppSession] = []
    server = None if address is None else EmbeddedHttpServer(window, *address)
    on_session = None if server is None else server.start_for
    task = open_database_in_background(window, database, sessions, on_session)
    logger.info("OMR Desktop %s started", __version__)
    try:
        status = app.exec() if server is None else server.run_loop(app)
    finally:
        for session in sessions:
            session.close()
        QThreadPool.globalInstance().waitForDone()
        del task
        database.close()
    logger.info("OMR Desktop exited with status %d", status)
    return int(status)


def stop_on_signals(app: QApplication) -> None:
    """Quit cleanly on SIGINT and SIGTERM, as on closing the window.

    Python runs signal handlers only between bytecodes, never inside Qt's
    event loop, so a timer hands control back to Python a few times a second.
    """
    import signal

    from PySide6.QtCore import QTimer

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_args: app.quit())
    timer = QTimer(app)
    timer.timeout.connect(lambda: None)
    timer.start(250)


class EmbeddedHttpServer:
    """The HTTP interface inside the GUI, on the qasync loop that also runs Qt.

    Tasks posted over HTTP go to the GUI's own TaskManager, so they show in
    the Tasks panel, and tasks started in the GUI can be followed over HTTP.
    """

    def __init__(self, window: MainWindow, host: str, port: int) -> None:
        self._window = window
        self._host = host
        self._port = port
        self._runners: list[Any] = []
        self.url: str | None = None

    def start_for(self, session: AppSession) -> None:
        import asyncio

        asyncio.get_event_loop().create_task(self._serve(session))

    async def _serve(self, session: AppSession) -> None:
        from omr_desktop.cli_serve import CORS_VARIABLE, TOKEN_VARIABLE
        from omr_desktop.server.app import create_app, start_server

        token = os.environ.get(TOKEN_VARIABLE) or None
        origins = [
            o.strip() for o in os.environ.get(CORS_VARIABLE, "").split(",") if o.strip()
        ]
        web_app = create_app(
            session.manager,
            token=token,
            cors_origins=origins,
            cluster_events=cluster_event_source(session.manager.engine),
        )
        try:
            runner, port = await start_server(web_app, self._host, self._port)
        except (ValueError, OSError) as exc:
            logger.error(
                "HTTP server not started on %s:%d: %s", self._host, self._port, exc
            )
            QMessageBox.warning(
                self._window, "HTTP server", f"The HTTP server did not start: {exc}"
            )
            return
        self._runners.append(runner)
        self.url = f"http://{self._host}:{port}"
        logger.info("Server listening on %s:%d", self._host, port)
        self._window.statusBar().showMessage(f"HTTP server on {self.url}", 15_000)

    def run_loop(self, app: QApplication) -> int:
        """Run Qt and asyncio on one qasync loop until the application quits."""
        import asyncio

        # PySide6 is imported above, so qasync binds to it.
        import qasync

        loop = qasync.QEventLoop(app)
        asyncio.set_event_loop(loop)
        quitting = asyncio.Event()
        app.aboutToQuit.connect(quitting.set)
        with loop:
            loop.run_until_complete(quitting.wait())
            for runner in self._runners:
                loop.run_until_complete(runner.cleanup())
        return 0
