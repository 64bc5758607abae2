"""The database the application uses: an existing PostgreSQL or the embedded one."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

from omr_desktop import config
from omr_desktop.db.embedded import EmbeddedServer
from omr_desktop.db.migrate import check_schema, migrate

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10


class DatabaseUnavailableError(RuntimeError):
    """The database cannot be reached; the message says where and why."""


@dataclass(frozen=True)
class DatabaseLocation:
    """Where the database is, safe to show: never holds the password.

    Attributes:
        kind: ``"embedded"`` or ``"external"``.
        source: ``"environment"``, ``"settings"`` or ``"embedded"``.
        host, port, dbname, user: the connection target.
        data_dir: the embedded cluster's data folder, else ``None``.
    """

    kind: str
    source: str
    host: str
    port: str
    dbname: str
    user: str
    data_dir: Path | None

    def describe(self) -> str:
        target = f"{self.user}@{self.host}:{self.port}/{self.dbname}"
        if self.kind == "embedded":
            return f"embedded PostgreSQL in {self.data_dir} ({target})"
        return f"PostgreSQL at {target} (from {self.source})"


def safe_location(
    conninfo: str, kind: str, source: str, data_dir: Path | None = None
) -> DatabaseLocation:
    """Describe ``conninfo`` without its password."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    return DatabaseLocation(
        kind=kind,
        source=source,
        host=str(params.get("host") or params.get("hostaddr") or "localhost"),
        port=str(params.get("port") or "5432"),
        dbname=str(params.get("dbname") or params.get("user") or ""),
        user=str(params.get("user") or ""),
        data_dir=data_dir,
    )


class Database:
    """Open, migrate and connect to the configured database.

    With the embedded database, the object also holds one connection open
    for as long as it is open, so that another application instance that
    exits does not stop the server under it.
    """

    def __init__(
        self,
        choice: config.DatabaseChoice | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.choice = choice or config.database_choice()
        self.data_dir = data_dir or config.data_dir()
        self.embedded: EmbeddedServer | None = None
        self._conninfo: str | None = None
        self._keepalive: psycopg.Connection | None = None
        self._lock = threading.Lock()
        # Keyed by the OS thread id, not held in a threading.local: a Qt
        # pool thread enters Python afresh for each task, and each entry got
        # a new, empty threading.local, so every task opened a connection.
        self._lent: dict[int, psycopg.Connection] = {}

    @property
    def conninfo(self) -> str:
        if self._conninfo is None:
            raise DatabaseUnavailableError("The database is not open.")
        return self._conninfo

    def open(self, *, apply_migrations: bool = True) -> None:
        """Start the embedded server if needed, connect, and migrate.

        Raises:
            DatabaseUnavailableError: the server cannot be reached.
            omr_desktop.db.migrate.MigrationError: the schema does not fit.
            omr_desktop.db.embedded.EmbeddedDatabaseError: the embedded server
                cannot start.
        """
        if self.choice.embedded:
            self.embedded = EmbeddedServer(self.data_dir)
            self.embedded.start()
            self._conninfo = self.embedded.conninfo()
        else:
            assert self.choice.url is not None
            self._conninfo = self.choice.url
        self._keepalive = self._connect_checked()
        logger.info("Database connected: %s", self.location().describe())
        if apply_migrations:
            with self.connect(autocommit=True) as conn:
                applied = migrate(conn)
                version = check_schema(conn)
            if applied:
                logger.info("Schema migrated to version %d", version)

    def connect(self, **kwargs: Any) -> psycopg.Connection:
        """Open a new connection; the caller closes it."""
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        return psycopg.connect(self.conninfo, **kwargs)

    @contextmanager
    def reused(self) -> Iterator[psycopg.Connection]:
        """Lend this thread's own connection, opening it on first use.

        For short queries from a thread pool (the GUI's): a new connection
        with SCRAM authentication costs tens of milliseconds, more than
        most queries behind a click. The block's work is committed at its
        end, or rolled back if it raises. Only the thread that opened a
        connection uses it, so a pool whose threads end (Qt's do when idle,
        unless told otherwise) leaves their connections open until close().
        """
        thread_id = threading.get_ident()
        with self._lock:
            conn = self._lent.get(thread_id)
        if conn is None or conn.closed or conn.broken:
            conn = self.connect()
            with self._lock:
                stale = self._lent.get(thread_id)
                self._lent[thread_id] = conn
            if stale is not None:
                stale.close()
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def location(self) -> DatabaseLocation:
        kind = "embedded" if self.choice.embedded else "external"
        data_dir = self.data_dir if self.choice.embedded else None
        return safe_location(self.conninfo, kind, self.choice.source, data_dir)

    def close(self) -> None:
        """Close the held connection and stop the embedded server if unused."""
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None
        with self._lock:
            lent, self._lent = self._lent, {}
        for conn in lent.values():
            conn.close()
        if self.embedded is not None:
            self.embedded.stop_if_unused()

    def __enter__(self) -> Database:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connect_checked(self) -> psycopg.Connection:
        try:
            return self.connect(autocommit=True)
        except psycopg.OperationalError as exc:
            where = self.location().describe()
            hint = (
                "Check that the server runs and OMR_DATABASE_URL is right, or "
                "unset OMR_DATABASE_URL to use the embedded database."
            )
            raise DatabaseUnavailableError(
                f"Cannot connect to {where}: {_first_line(exc)}. {hint}"
            ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
