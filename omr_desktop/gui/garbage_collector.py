"""Run Python's cyclic garbage collector on the GUI thread only.

CPython collects cycles in whichever thread happens to allocate when a
generation's count passes its threshold, and PySide6 destroys a collected
Qt object's C++ side in that thread. A collection started in a QThreadPool
worker once hung the test suite: the worker, destroying a collected object
in ``QObject::~QObject``, held a Qt mutex and waited for the GIL, while the
GUI thread, destroying a menu, waited for that mutex.

`install` turns automatic collection off and collects on a GUI-thread
timer instead, one generation at a time, by the thresholds and counts the
automatic collector would use. Reference counting still frees everything
that is not in a cycle at once, on any thread. The command line and the
server without a GUI keep Python's automatic collection.
"""

from __future__ import annotations

import gc
import logging

from PySide6.QtCore import QCoreApplication, QObject, QTimer

logger = logging.getLogger(__name__)

# Often enough that cyclic garbage from a reprocess (a few thousand
# objects a second) never builds up, rarely enough to cost nothing idle.
INTERVAL_MS = 500


class GuiThreadCollector(QObject):
    """Collect garbage cycles on a timer of the thread it lives in."""

    def __init__(self, parent: QObject) -> None:
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setInterval(INTERVAL_MS)
        self._timer.timeout.connect(self.collect_due)

    def start(self) -> None:
        """Turn automatic collection off and start the timer."""
        gc.disable()
        self._timer.start()

    def stop(self) -> None:
        """Stop the timer and turn automatic collection back on."""
        self._timer.stop()
        gc.enable()

    def collect_due(self) -> int:
        """Collect the oldest generation whose count passed its threshold.

        Returns the number of unreachable objects found, 0 when no
        generation was due.
        """
        counts = gc.get_count()
        thresholds = gc.get_threshold()
        for generation in (2, 1, 0):
            if counts[generation] > thresholds[generation]:
                return gc.collect(generation)
        return 0


_collector: GuiThreadCollector | None = None


def install(app: QCoreApplication) -> GuiThreadCollector:
    """Collect garbage only on ``app``'s thread from now on; return the collector.

    Calling it again returns the running collector.
    """
    global _collector
    if _collector is None:
        _collector = GuiThreadCollector(app)
        _collector.start()
        logger.debug("Garbage cycles are collected on the GUI thread only")
    return _collector


def uninstall() -> None:
    """Stop the collector, collect once, and turn automatic collection on."""
    global _collector
    if _collector is not None:
        _collector.stop()
        _collector.deleteLater()
        _collector = None
    gc.collect()
