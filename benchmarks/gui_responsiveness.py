"""Measure how the GUI responds: a 10,000-sheet list, and stalls in a reprocess.

    python benchmarks/gui_responsiveness.py [--sheets 7109] [--list-sheets 10000]

Runs a real window: under the X server in DISPLAY, or, without one, under an
Xvfb it starts itself (Debian packages xvfb, libxcb-icccm4, libxcb-keysyms1,
libxcb-cursor0). The whole window is painted throughout.

1. Seeds N demo sheets with images, and a batch of --list-sheets sheets
   without images for the list timings, in a scratch embedded database.
2. Times opening the big batch, scrolling its list to the end, and Ctrl+A
   in select mode, each until the window has repainted.
3. Runs the editor's reprocess of the N demo sheets with Sensitive through
   the same profile and progress dialogs the Re-Process icon opens, while a
   10 ms timer on the GUI thread records how late each tick comes. Prints
   the maximum and the 99th percentile of the stalls over the whole run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TICK_MS = 10


def main() -> int:
    args = parse_args()
    xvfb = None
    if not os.environ.get("DISPLAY"):
        xvfb = start_xvfb()
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    scratch = Path(tempfile.mkdtemp(prefix="omr-bench-gui-"))
    scratch.chmod(0o755)
    try:
        run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheets", type=int, default=7109)
    parser.add_argument("--list-sheets", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def start_xvfb() -> subprocess.Popen[bytes]:
    display = f":{90 + os.getpid() % 9}"
    process = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", "1600x1000x24", "-nolisten", "tcp"]
    )
    os.environ["DISPLAY"] = display
    time.sleep(1.0)
    return process


def run(args: argparse.Namespace, scratch: Path) -> None:
    import psycopg

    from omr_desktop.config import DatabaseChoice
    from omr_desktop.db.database import Database
    from omr_desktop.db.embedded import EmbeddedServer
    from omr_desktop.db.migrate import migrate
    from omr_desktop.pipeline.demo import seed_demo

    server = EmbeddedServer(scratch / "pg")
    server.start()
    try:
        conninfo = server.conninfo()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            migrate(conn)
        started = time.perf_counter()
        with psycopg.connect(conninfo) as conn:
            seed_demo(conn, scratch / "data", sheets=args.sheets, workers=args.threads)
            add_list_batch(conn, args.list_sheets)
            conn.commit()
        print(
            f"Seeded {args.sheets:,} demo sheets and a {args.list_sheets:,}-sheet "
            f"list batch in {time.perf_counter() - started:.0f} s"
        )
        database = Database(DatabaseChoice(conninfo, "environment"))
        database.open()
        try:
            measure(database, args)
        finally:
            database.close()
    finally:
        server.stop()


def add_list_batch(conn: Any, count: int) -> None:
    """Add a batch of ``count`` sheets with flags but no images (list timings only)."""
    template = conn.execute("SELECT id FROM templates LIMIT 1").fetchone()
    batch = conn.execute(
        "INSERT INTO batches (name, template_id) VALUES ('List 10k', %s) RETURNING id",
        (template[0],),
    ).fetchone()
    conn.execute(
        "INSERT INTO students (code, name)"
        " SELECT 'L' || n, 'Student ' || n FROM generate_series(1, %s) n",
        (count,),
    )
    conn.execute(
        "INSERT INTO sheets (batch_id, student_id, sequence_no, image_path, status,"
        " score, last_profile_id, processed_at)"
        " SELECT %s, st.id, n, '/none/' || n || '.jpg', 'processed', n %% 150, 1, now()"
        " FROM generate_series(1, %s) n JOIN students st ON st.code = 'L' || n",
        (batch[0], count),
    )
    conn.execute(
        "INSERT INTO sheet_flags (sheet_id, flag, count)"
        " SELECT id, 'LOW_CONFIDENCE', 1 FROM sheets"
        " WHERE batch_id = %s AND sequence_no %% 3 = 0",
        (batch[0],),
    )
    # As an import does at its end: after the commit, so that ANALYZE also
    # sets the rows' hint bits and the first open does not.
    conn.commit()
    conn.execute("ANALYZE sheets, students, sheet_flags")


def measure(database: Any, args: argparse.Namespace) -> None:
    from PySide6.QtCore import QElapsedTimer, QSettings, Qt, QTimer

    from omr_desktop.app import AppSession, create_application, freeze_startup_objects
    from omr_desktop.gui.windows.main_window import MainWindow

    # Private settings: a last batch restored from an earlier run would
    # load while the list timings run.
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(
        QSettings.Format.IniFormat,
        QSettings.Scope.UserScope,
        tempfile.mkdtemp(prefix="omr-bench-settings-"),
    )
    app = create_application()
    window = MainWindow()
    window.resize(1600, 950)
    window.show()
    session = AppSession(window, database, args.threads)
    freeze_startup_objects()  # as the application does once its session starts
    wait_for(app, window.batches_loaded, lambda: window.set_database(database))
    list_timings(app, window)

    ticks: list[float] = []
    clock = QElapsedTimer()
    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(TICK_MS)
    last = [0.0]

    def tick() -> None:
        now = clock.nsecsElapsed() / 1e6
        ticks.append(now - last[0] - TICK_MS)
        last[0] = now

    timer.timeout.connect(tick)
    reprocess_demo(app, window, session, clock, timer, last)
    session.close()
    window.close()
    report_stalls(ticks)


def wait_for(app: Any, signal: Any, action: Any, timeout_s: float = 600) -> float:
    """Run ``action`` and process events until ``signal`` fires; return seconds."""
    fired: list[Any] = []
    signal.connect(lambda *a: fired.append(a))
    started = time.perf_counter()
    action()
    while not fired:
        app.processEvents()
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"no {signal} within {timeout_s} s")
        time.sleep(0.001)
    return time.perf_counter() - started


def repaint_time(app: Any, window: Any, action: Any) -> float:
    started = time.perf_counter()
    action()
    window.repaint()
    app.processEvents()
    return time.perf_counter() - started


def list_timings(app: Any, window: Any) -> None:
    rows = {
        window.batch_proxy.index(r, 0).data(): r
        for r in range(window.batch_proxy.rowCount())
    }
    # The big batch is opened three times, from the small demo batch each
    # time: the first open runs on cold caches and a new connection.
    opens = []
    for _ in range(3):
        wait_for(
            app,
            window.sheets_loaded,
            lambda: window.batches_view.selectRow(rows["Demo"]),
        )
        repaint_time(app, window, lambda: None)
        opened = wait_for(
            app,
            window.sheets_loaded,
            lambda: window.batches_view.selectRow(rows["List 10k"]),
        )
        opens.append(opened + repaint_time(app, window, lambda: None))
    scrolled = repaint_time(app, window, window.sheets_view.scrollToBottom)
    window.select_mode_button.setChecked(True)
    selected = repaint_time(app, window, window.select_all_visible)
    count = len(window.sheet_model.checked_ids())
    window.select_mode_button.setChecked(False)
    print(
        f"List of {window.sheet_model.rowCount():,} sheets: open "
        + ", ".join(f"{t * 1000:.0f}" for t in opens)
        + f" ms (query, model and paint), scroll to end {scrolled * 1000:.0f} ms, "
        f"Ctrl+A {selected * 1000:.0f} ms ({count:,} checked)"
    )


def reprocess_demo(
    app: Any, window: Any, session: Any, clock: Any, timer: Any, last: list[float]
) -> None:
    row = next(
        r
        for r in range(window.batch_proxy.rowCount())
        if window.batch_proxy.index(r, 0).data() == "Demo"
    )
    wait_for(app, window.sheets_loaded, lambda: window.batches_view.selectRow(row))
    window.select_mode_button.setChecked(True)
    window.select_all_visible()
    from PySide6.QtCore import QEventLoop

    ended: list[str] = []
    loop = QEventLoop()
    session.flow.task_ended.connect(ended.append)
    session.flow.task_ended.connect(lambda _task_id: loop.quit())

    def choose(dialog: Any) -> None:
        dialog.select_profile(2)
        dialog.accept()

    session.flow.profile_dialog_opened.connect(choose)
    clock.start()
    last[0] = 0.0
    timer.start()
    started = time.perf_counter()
    window.reprocess_button.click()
    # A real event loop, as the application runs, until the last event.
    loop.exec()
    timer.stop()
    events = session.flow.events_of(ended[0])
    result = events[-1].result or {}
    print(
        f"Reprocess of {len(window.sheet_model.checked_ids()):,} sheets: "
        f"{time.perf_counter() - started:.1f} s, {events[-1].event}, "
        f"{result.get('answers_changed', 0):,} answers changed, "
        f"{len(events)} events"
    )


def report_stalls(ticks: list[float]) -> None:
    if not ticks:
        print("No timer ticks recorded.")
        return
    ordered = sorted(ticks)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"GUI thread lateness over {len(ticks):,} ticks of {TICK_MS} ms: "
        f"max {ordered[-1]:.1f} ms, 99th percentile {p99:.1f} ms, "
        f"median {ordered[len(ordered) // 2]:.1f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
