"""Garbage cycles are collected on the GUI thread, never in a worker."""

from __future__ import annotations

import gc
import threading
import weakref

from PySide6.QtCore import QObject, QRunnable, QThreadPool
from pytestqt.qtbot import QtBot

from omr_desktop.gui import garbage_collector


class _Cycle:
    """An object that refers to itself, so only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.myself = self
        self.qt_object = QObject()


def test_application_turns_automatic_collection_off() -> None:
    # The _app fixture has called create_application.
    assert not gc.isenabled()
    assert garbage_collector._collector is not None


def test_worker_cycle_freed_on_gui_thread(qtbot: QtBot) -> None:
    freed_on: list[str] = []
    garbage_made = threading.Event()
    kept_alive: list[object] = []

    class MakeGarbage(QRunnable):
        def run(self) -> None:
            cycle = _Cycle()
            weakref.finalize(
                cycle, lambda: freed_on.append(threading.current_thread().name)
            )
            del cycle
            # Enough live allocations to pass gen0's threshold many times
            # over, which would start a collection here if it were automatic.
            kept_alive.append([[i] for i in range(50_000)])
            garbage_made.set()

    QThreadPool.globalInstance().start(MakeGarbage())
    qtbot.waitUntil(garbage_made.is_set, timeout=5000)
    assert freed_on == []  # nothing was collected in the worker
    qtbot.waitUntil(lambda: bool(freed_on), timeout=10_000)
    assert freed_on == [threading.main_thread().name]


def test_collect_due_collects_oldest_due_generation() -> None:
    collector = garbage_collector._collector
    assert collector is not None
    gc.collect()
    assert collector.collect_due() == 0  # nothing is due right after a collection
    cycle = _Cycle()
    reference = weakref.ref(cycle)
    del cycle
    threshold = gc.get_threshold()[0]
    live = [[i] for i in range(threshold + 10)]  # gen0 counts live objects
    assert collector.collect_due() > 0
    assert reference() is None
    assert len(live) == threshold + 10


def test_uninstall_turns_automatic_collection_on() -> None:
    garbage_collector.uninstall()
    assert gc.isenabled()
    assert garbage_collector._collector is None
