"""Qt fixtures: the application object with the product's names, private settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, QThreadPool

from omr_desktop.app import create_application
from omr_desktop.gui import garbage_collector


@pytest.fixture(autouse=True)
def _private_qsettings(tmp_path: Path) -> None:
    """Keep window geometry and last batch of each test in its own folder."""
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(
        QSettings.Format.IniFormat,
        QSettings.Scope.UserScope,
        str(tmp_path / "qsettings"),
    )


@pytest.fixture(autouse=True)
def _app(qapp: object) -> Iterator[None]:
    create_application()
    yield
    # The tests outside tests/gui run without the Qt event loop that the
    # GUI-thread collector needs, so they get automatic collection back.
    garbage_collector.uninstall()


@pytest.fixture(autouse=True)
def _no_leftover_pool_work() -> Iterator[None]:
    """Fail a test that leaves work running on the global thread pool."""
    yield
    pool = QThreadPool.globalInstance()
    if not pool.waitForDone(10_000):
        pytest.fail(
            f"{pool.activeThreadCount()} pool thread(s) still busy after the test"
        )
