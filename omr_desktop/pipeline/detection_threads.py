"""The detection threads' scheduling priority, and a thread pool that sets it.

Detection keeps every core busy for the whole of Processing Sheets. Three
other threads need a core meanwhile, a few milliseconds at a time: the
database server's backend, which parses the COPY rows streamed to it, the
pipeline's writer, which sends them, and in the GUI the Qt event loop. At
the same priority as the detection threads they wait in the run queue.

So one detection thread of each pool runs under Linux's ``SCHED_IDLE``
policy. Linux places a waking thread on a core whose threads are all
``SCHED_IDLE`` as on an idle core, and the waking thread takes it at once.
A higher nice value does not do that: even at nice 19 a waking thread
waits for the running detection thread's time slice to end.

Measured with ``benchmarks/reprocess.py`` for 7,109 sheets on a 2-core VM
(``docs/benchmarks.md``): with both detection threads at normal priority,
the COPY during Processing Sheets took 1.50-1.54 s. It took 1.23-1.45 s at
nice 19, 1.07-1.12 s with both threads under ``SCHED_IDLE``, and 1.16-1.26
s with one. Processing Sheets took as long in each case.

Only one thread, because a busy program of normal priority elsewhere on
the machine takes that thread's core entirely, where it would otherwise
share it. The other threads keep their share. ``OMR_DETECTION_PRIORITY=
normal`` leaves every detection thread at normal priority.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from omr_desktop.config import DETECTION_IDLE, ConfigError, detection_priority

logger = logging.getLogger(__name__)

# os.sched_setscheduler and SCHED_IDLE exist on Linux only.
_HAS_SCHED_IDLE = sys.platform.startswith("linux") and hasattr(os, "SCHED_IDLE")


class DetectionPriority:
    """The priority of one pool's detection threads.

    Each thread calls `apply` when it starts work. The first thread to call
    it goes under ``SCHED_IDLE`` when the priority is idle, and the others
    keep theirs. Thread-safe.

    Args:
        priority: ``"idle"`` or ``"normal"``. By default OMR_DETECTION_PRIORITY,
            and idle with a warning logged when its value is invalid.
    """

    def __init__(self, priority: str | None = None) -> None:
        if priority is None:
            try:
                priority = detection_priority()
            except ConfigError as exc:
                logger.warning("%s Using %r.", exc, DETECTION_IDLE)
                priority = DETECTION_IDLE
        self.priority = priority
        self._lock = threading.Lock()
        self._idle_thread: int | None = None
        self._applied = threading.local()

    @property
    def idle_thread(self) -> int | None:
        """The native id of the thread under ``SCHED_IDLE``, or None."""
        return self._idle_thread

    def apply(self) -> None:
        """Set the calling thread's priority; later calls on it do nothing."""
        if getattr(self._applied, "done", False):
            return
        self._applied.done = True
        if self.priority != DETECTION_IDLE or not _HAS_SCHED_IDLE:
            return
        with self._lock:
            if self._idle_thread is not None:
                return
            try:
                # On Linux, pid 0 is the calling thread, not the whole process.
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            except OSError as exc:
                logger.debug("Detection thread kept its priority: %s", exc)
                return
            self._idle_thread = threading.get_native_id()


def detection_pool(workers: int) -> ThreadPoolExecutor:
    """Return a pool of ``workers`` detection threads, one under ``SCHED_IDLE``."""
    priority = DetectionPriority()
    return ThreadPoolExecutor(
        workers, thread_name_prefix="detect", initializer=priority.apply
    )
