"""A concurrent.futures Executor over QThreadPool, for the detection workers.

The reprocess pipeline is written against ``concurrent.futures.Executor``;
the GUI gives it this one so that detection runs on a QThreadPool whose
size the editor sets. Each job is a QRunnable that reports through a
signals QObject (a QRunnable is not a QObject) and completes a Future the
pipeline waits on.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

logger = logging.getLogger(__name__)


class DetectionSignals(QObject):
    """Signals of one detection job.

    Signals:
        finished(object): the job's return value.
        failed(str): the job's exception, as text.
    """

    finished = Signal(object)
    failed = Signal(str)


class _DetectionRunnable(QRunnable):
    def __init__(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        on_done: Callable[[], None],
    ) -> None:
        super().__init__()
        self.signals = DetectionSignals()
        self._future = future
        self._call = (fn, args, kwargs)
        self._on_done = on_done

    def run(self) -> None:
        _lower_thread_priority()
        try:
            if not self._future.set_running_or_notify_cancel():
                return
            fn, args, kwargs = self._call
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the Future
                self._future.set_exception(exc)
                self.signals.failed.emit(f"{type(exc).__name__}: {exc}")
            else:
                self._future.set_result(result)
                self.signals.finished.emit(result)
        finally:
            self._on_done()


# Niceness of the detection threads. With both cores busy detecting, the
# GUI thread at the default niceness waited for the CPU: a 7,109-sheet
# reprocess showed stalls of up to 89 ms in the GUI, against 50 ms allowed.
DETECTION_NICENESS = 5

_thread_state = threading.local()


def _lower_thread_priority() -> None:
    """Make this pool thread yield the CPU to the GUI thread (Linux, once).

    Linux applies niceness per thread; QThread priorities have no effect
    under its default scheduler. Elsewhere this does nothing.
    """
    if getattr(_thread_state, "niced", False):
        return
    _thread_state.niced = True
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(
                os.PRIO_PROCESS, threading.get_native_id(), DETECTION_NICENESS
            )
        except OSError as exc:
            logger.debug("Could not lower a detection thread's priority: %s", exc)


class QThreadPoolExecutor(Executor):
    """Run submitted calls on a QThreadPool; thread-safe.

    Args:
        pool: the pool to use; by default a new one of ``max_workers`` threads.
    """

    def __init__(self, max_workers: int, pool: QThreadPool | None = None) -> None:
        self._pool = pool or QThreadPool()
        self._pool.setMaxThreadCount(max_workers)
        self._lock = threading.Lock()
        self._futures: set[Future[Any]] = set()
        self._shutdown = False

    @property
    def max_workers(self) -> int:
        return self._pool.maxThreadCount()

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError(
                    "cannot submit to a QThreadPoolExecutor after shutdown"
                )
            self._futures.add(future)
        runnable = _DetectionRunnable(
            future, fn, args, kwargs, lambda: self._forget(future)
        )
        runnable.setAutoDelete(True)
        self._pool.start(runnable)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            # Jobs still queued never run once cleared, so their futures are
            # cancelled here; running ones finish.
            self._pool.clear()
            for future in futures:
                future.cancel()
        if wait:
            self._pool.waitForDone()
