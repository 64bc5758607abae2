"""Run one database call on the thread pool and deliver its result by signal."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, Signal

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
