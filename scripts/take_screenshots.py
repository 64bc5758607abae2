"""Save screenshots of the editor's workflow into docs/screenshots/.

    .venv/bin/python scripts/take_screenshots.py [--sheets 120]

Seeds demo sheets in a scratch embedded database, then shows the real
windows (offscreen unless QT_QPA_PLATFORM says otherwise) and saves:
main_window.png (select mode with sheets ticked and a sheet open),
profile_dialog.png (Sensitive chosen, with its preview), and
progress_dialog_running.png / progress_dialog_complete.png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
SENSITIVE = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheets", type=int, default=120)
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    scratch = Path(tempfile.mkdtemp(prefix="omr-screenshots-"))
    scratch.chmod(0o755)
    try:
        return run(scratch, args.sheets)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(scratch: Path, sheets: int) -> int:
    import psycopg

    from omr_desktop.config import DatabaseChoice
    from omr_desktop.db.database import Database
    from omr_desktop.db.embedded import EmbeddedServer
    from omr_desktop.db.migrate import migrate
    from omr_desktop.pipeline.demo import seed_demo

    server = EmbeddedServer(scratch / "pg")
    server.start()
    try:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            migrate(conn)
        with psycopg.connect(server.conninfo()) as conn:
            seed_demo(
                conn,
                scratch / "data",
                sheets=sheets,
                batch_name="Physics mock",
                workers=2,
            )
        database = Database(DatabaseChoice(server.conninfo(), "environment"))
        database.open()
        try:
            shoot(database)
        finally:
            database.close()
    finally:
        server.stop()
    return 0


def shoot(database: Any) -> None:
    from PySide6.QtCore import QEventLoop, QThreadPool, QTimer

    from omr_desktop.app import AppSession, create_application
    from omr_desktop.gui.windows.main_window import MainWindow

    create_application()
    OUT.mkdir(parents=True, exist_ok=True)
    window = MainWindow()
    window.resize(1600, 950)
    window.show()
    session = AppSession(window, database, threads=2)

    def wait(signal: Any, action: Any) -> list[Any]:
        loop = QEventLoop()
        got: list[Any] = []
        signal.connect(lambda *a: (got.append(a), loop.quit()))
        action()
        QTimer.singleShot(120_000, loop.quit)
        loop.exec()
        return got

    def settle(ms: int = 400) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    wait(window.batches_loaded, lambda: window.set_database(database))
    wait(window.sheets_loaded, lambda: window.batches_view.selectRow(0))
    window.select_mode_button.setChecked(True)
    window.sheet_model.set_checked(
        [window.sheet_model.record(r).id for r in range(12)], True
    )
    wait(
        window.sheet_opened,
        lambda: window.sheets_view.setCurrentIndex(window.sheet_model.index(2, 1)),
    )
    settle()
    window.grab().save(str(OUT / "main_window.png"))

    dialogs: list[Any] = []
    session.flow.profile_dialog_opened.connect(dialogs.append)
    wait(session.flow.profile_dialog_opened, window.reprocess_button.click)
    profile_dialog = dialogs[0]
    wait(profile_dialog.preview_shown, lambda: profile_dialog.select_profile(SENSITIVE))
    settle()
    profile_dialog.grab().save(str(OUT / "profile_dialog.png"))

    progress: list[Any] = []
    session.flow.progress_dialog_opened.connect(progress.append)
    running_saved: list[bool] = []

    def on_event(event: Any) -> None:
        if (
            progress
            and not running_saved
            and event.stage == "Processing Sheets"
            and 30 <= event.progress_percentage < 100
        ):
            progress[0].grab().save(str(OUT / "progress_dialog_running.png"))
            running_saved.append(True)

    session.flow.event_received.connect(on_event)
    # Reprocess the whole batch, so the run lasts long enough to be caught
    # mid-way.
    profile_dialog.reject()
    window.select_all_visible()
    dialogs.clear()
    wait(session.flow.profile_dialog_opened, window.reprocess_button.click)
    dialogs[0].select_profile(SENSITIVE)
    wait(session.flow.task_ended, dialogs[0].accept)
    settle()
    progress[0].grab().save(str(OUT / "progress_dialog_complete.png"))
    progress[0].accept()
    session.close()
    window.close()
    # Closing the dialog refreshed the list on a pool thread; the database
    # closes its connections only once that is done, as the app does.
    QThreadPool.globalInstance().waitForDone()
    print(f"Saved screenshots to {OUT}")


if __name__ == "__main__":
    sys.exit(main())
