"""Run one database call on the thread pool and deliver its result by signal."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

logger = logging.getLogger(__name__)


class DbTaskSignals(QObject):
    """Signals of a DbTask (a QRunnable cannot carry signals itself).

    Signals:
        finished(object): the call's return value.
        failed(str): the error message, written for the user.
    """

    finished = Signal(object)
    failed = Signal(str)


class DbTask(QRunnable):
    """Call ``function()`` on a pool thread; never touches a widget.

    The function must open and close its own connection, because psycopg
    connections are not shared between threads here.
    """

    def __init__(self, function: Callable[[], Any]) -> None:
        super().__init__()
        self._function = function
        self.signals = DbTaskSignals()

    def run(self) -> None:
        from omr_desktop.errors import is_expected_error

        try:
            result = self._function()
        except Exception as exc:  # noqa: BLE001 - reported through the signal
            if not is_expected_error(exc):
                logger.exception("Database task failed")
            self.signals.failed.emit(str(exc))
            return
        self.signals.finished.emit(result)


class DbTaskRunner:
    """Start DbTasks on a pool and keep each alive until it has reported.

    Results come back on the GUI thread through the tasks' queued signals.
    A failure goes to the call's ``on_failed``, else to the runner's, else
    to the log.
    """

    def __init__(
        self,
        pool: QThreadPool | None = None,
        on_failed: Callable[[str], object] | None = None,
    ) -> None:
        self._pool = pool or QThreadPool.globalInstance()
        # Tasks use Database.reused(), one connection per pool thread. Qt
        # ends a thread idle for 30 s by default and starts a new one, which
        # would open another connection while the old one stayed open until
        # the application closed: keep the threads instead.
        self._pool.setExpiryTimeout(-1)
        self._on_failed = on_failed or _log_failure
        self._running: set[DbTask] = set()

    def run(
        self,
        function: Callable[[], Any],
        on_done: Callable[[Any], None],
        on_failed: Callable[[str], object] | None = None,
    ) -> None:
        task = DbTask(function)
        task.setAutoDelete(False)
        self._running.add(task)
        task.signals.finished.connect(on_done)
        task.signals.failed.connect(on_failed or self._on_failed)
        task.signals.finished.connect(lambda _result: self._running.discard(task))
        task.signals.failed.connect(lambda _message: self._running.discard(task))
        self._pool.start(task)


def _log_failure(message: str) -> None:
    logger.warning("Background database call failed: %s", message)
