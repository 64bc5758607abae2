"""The engine setting: local threads or the cluster, and the fall-back to local."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from omr_desktop import config
from omr_desktop.app import AppSession
from omr_desktop.config import DatabaseChoice, EngineChoice
from omr_desktop.db.database import Database
from omr_desktop.engine_setup import make_engine
from omr_desktop.gui.dialogs.engine_dialog import EngineDialog
from omr_desktop.gui.windows.main_window import MainWindow
from omr_desktop.pipeline.task_manager import LocalEngine
from tests.cluster.conftest import free_port, redis_url  # noqa: F401 - fixture

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def _private_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("OMR_ENGINE", raising=False)
    monkeypatch.delenv("OMR_BROKER_URL", raising=False)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


def test_cluster_on_embedded_database_falls_back(pool: ThreadPoolExecutor) -> None:
    database = Database(DatabaseChoice(None, "embedded"))
    choice = EngineChoice(config.ENGINE_CLUSTER, "redis://127.0.0.1:6379/0")

    setup = make_engine(choice, database, pool, 1)

    assert isinstance(setup.engine, LocalEngine)
    assert setup.fallback_reason is not None
    assert "OMR_DATABASE_URL" in setup.fallback_reason


def test_unreachable_broker_falls_back(pool: ThreadPoolExecutor) -> None:
    database = Database(DatabaseChoice("postgresql://127.0.0.1/x", "environment"))
    url = f"redis://127.0.0.1:{free_port()}/0"

    setup = make_engine(EngineChoice(config.ENGINE_CLUSTER, url), database, pool, 1)

    assert isinstance(setup.engine, LocalEngine)
    assert setup.fallback_reason is not None
    assert "is unreachable" in setup.fallback_reason
    assert setup.description == "local threads (1)"


def test_invalid_engine_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMR_ENGINE", "gpu")

    with pytest.raises(config.ConfigError, match="'gpu'"):
        config.engine_choice()


def test_engine_dialog_returns_choice(qtbot: QtBot) -> None:
    dialog = EngineDialog(EngineChoice(config.ENGINE_LOCAL, None))
    qtbot.addWidget(dialog)
    assert not dialog.broker_edit.isEnabled()

    dialog.cluster_button.setChecked(True)
    dialog.broker_edit.setText(" redis://10.0.0.5:6379/0 ")

    assert dialog.broker_edit.isEnabled()
    assert dialog.choice() == EngineChoice("cluster", "redis://10.0.0.5:6379/0")


@pytest.mark.db
def test_session_switches_to_cluster_and_back(
    qtbot: QtBot,
    db_conninfo: str,
    redis_url: str,  # noqa: F811
) -> None:
    database = Database(DatabaseChoice(db_conninfo, "environment"))
    database.open()
    window = MainWindow()
    qtbot.addWidget(window)
    session = AppSession(window, database, threads=1)
    try:
        assert isinstance(session.manager.engine, LocalEngine)

        setup = session.apply_engine_choice(EngineChoice("cluster", redis_url))

        assert setup is not None
        assert setup.fallback_reason is None
        assert type(session.manager.engine).__name__ == "ClusterEngine"
        assert config.engine_choice() == EngineChoice("cluster", redis_url)

        session.apply_engine_choice(EngineChoice("local", redis_url))

        assert isinstance(session.manager.engine, LocalEngine)
        assert config.engine_choice().kind == "local"
    finally:
        session.close()
        database.close()
