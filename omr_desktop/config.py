"""Application configuration: environment variables, saved settings and folders.

Every variable the application reads is named here, so that the README's
configuration table and the code cannot drift apart:

``OMR_DATABASE_URL``
    A libpq connection URL or keyword string for an existing PostgreSQL.
    Without it (and without a saved ``database_url`` setting) the embedded
    database is used.
``OMR_DATA_DIR``
    The data folder: embedded database cluster, demo images, settings.
``OMR_LOG_LEVEL``
    DEBUG, INFO, WARNING or ERROR; ``--log-level`` overrides it.
``OMR_LOG_DIR``
    Where the rotating log file goes.
``OMR_PG_BINDIR``
    A folder holding ``initdb``, ``pg_ctl`` and ``postgres`` for the
    embedded database, overriding the search.
``OMR_ENGINE``
    ``local`` (this machine's threads) or ``cluster`` (Celery workers),
    overriding the saved ``engine`` setting; default ``local``.
``OMR_BROKER_URL``
    The cluster's Redis URL, overriding the saved ``broker_url`` setting.
    ``omr_desktop/cluster/settings.py`` lists the cluster's other variables.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

logger = logging.getLogger(__name__)

APP_NAME = "omr-desktop"

# Root cannot run PostgreSQL (initdb and postgres reject it), so as root the
# embedded server runs as a system user, and that user must be able to reach
# the cluster folder. Root's home is normally mode 0700, so root's default
# data folder lives outside it.
ROOT_DATA_DIR = Path("/var/lib/omr-desktop")

SETTINGS_FILE_NAME = "settings.json"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it and the fix."""


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def data_dir() -> Path:
    """Return the data folder, creating nothing."""
    configured = os.environ.get("OMR_DATA_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    if _is_root():
        return ROOT_DATA_DIR
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def log_dir() -> Path:
    """Return the folder of the rotating log file, creating nothing."""
    configured = os.environ.get("OMR_LOG_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    if os.environ.get("OMR_DATA_DIR"):
        return data_dir() / "logs"
    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


def settings_path() -> Path:
    """Return the path of the saved settings file (JSON) in the data folder."""
    return data_dir() / SETTINGS_FILE_NAME


def load_saved_settings() -> dict[str, Any]:
    """Read the saved settings; a missing file gives an empty dict.

    Raises:
        ConfigError: the file exists but is not a JSON object.
    """
    path = settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"The settings file {path} is not valid JSON ({exc}). "
            "Fix or delete it; it is recreated with defaults."
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"The settings file {path} must hold a JSON object. "
            "Fix or delete it; it is recreated with defaults."
        )
    return data


def save_setting(key: str, value: Any) -> None:
    """Store one setting (``None`` removes it), keeping the others."""
    settings = load_saved_settings()
    if value is None:
        settings.pop(key, None)
    else:
        settings[key] = value
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True), encoding="utf-8")
    # The database URL may carry a password.
    tmp.chmod(0o600)
    tmp.replace(path)


@dataclass(frozen=True)
class DatabaseChoice:
    """Which database the application uses.

    Attributes:
        url: the connection URL of an existing PostgreSQL, or ``None`` for the
            embedded database.
        source: where the choice came from: ``"environment"``,
            ``"settings"`` or ``"embedded"``.
    """

    url: str | None
    source: str

    @property
    def embedded(self) -> bool:
        return self.url is None


def database_choice() -> DatabaseChoice:
    """Decide which database to use: environment, then saved setting, then embedded."""
    url = os.environ.get("OMR_DATABASE_URL", "").strip()
    if url:
        _check_url(url, "OMR_DATABASE_URL", "or unset OMR_DATABASE_URL")
        return DatabaseChoice(url, "environment")
    saved = load_saved_settings().get("database_url")
    if isinstance(saved, str) and saved.strip():
        _check_url(
            saved.strip(),
            "The saved database setting",
            "or run 'omr-desktop db use embedded'",
        )
        return DatabaseChoice(saved.strip(), "settings")
    return DatabaseChoice(None, "embedded")


def _check_url(url: str, where: str, other_fix: str) -> None:
    """Raise ConfigError if ``url`` is not a PostgreSQL connection string."""
    import psycopg

    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            f"{where} {url!r} is not a PostgreSQL connection URL "
            f"({str(exc).strip()}). Use "
            f"postgresql://user@host:port/dbname, {other_fix} to use the "
            "embedded database."
        ) from None


def log_level_name(cli_value: str | None) -> str:
    """Return the log level from ``--log-level``, then ``OMR_LOG_LEVEL``, else INFO.

    Raises:
        ConfigError: the name is not a logging level.
    """
    name = (cli_value or os.environ.get("OMR_LOG_LEVEL") or "INFO").upper()
    if name not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(
            f"Invalid log level {name!r}: use DEBUG, INFO, WARNING or ERROR "
            "(from --log-level or OMR_LOG_LEVEL)."
        )
    return name


ENGINE_LOCAL = "local"
ENGINE_CLUSTER = "cluster"
ENGINES = (ENGINE_LOCAL, ENGINE_CLUSTER)


@dataclass(frozen=True)
class EngineChoice:
    """The engine that reprocess tasks run on.

    Attributes:
        kind: ``"local"`` (this machine's threads) or ``"cluster"``.
        broker_url: the cluster's Redis URL, or ``None``.
    """

    kind: str
    broker_url: str | None


def engine_choice() -> EngineChoice:
    """Read the engine: environment, then saved settings, else local.

    Raises:
        ConfigError: the engine name is neither local nor cluster.
    """
    saved = load_saved_settings()
    kind = (os.environ.get("OMR_ENGINE") or str(saved.get("engine") or "")).strip()
    kind = kind.lower() or ENGINE_LOCAL
    if kind not in ENGINES:
        raise ConfigError(
            f"Invalid engine {kind!r} (from OMR_ENGINE or the engine setting): "
            "use 'local' or 'cluster'."
        )
    broker = os.environ.get("OMR_BROKER_URL") or saved.get("broker_url")
    broker_url = str(broker).strip() if broker else None
    return EngineChoice(kind, broker_url or None)


def save_engine_choice(choice: EngineChoice) -> None:
    """Store the engine and broker URL in the settings file."""
    save_setting("engine", choice.kind)
    save_setting("broker_url", choice.broker_url)
