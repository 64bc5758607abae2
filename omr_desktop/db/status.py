"""What ``omr-desktop db status`` reports: which database, its schema, its rows."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from omr_desktop.db.database import Database, DatabaseLocation
from omr_desktop.db.migrate import (
    MigrationHolder,
    applied_migrations,
    latest_version,
    migration_holder,
)

# Tables whose row counts the status shows, in the order shown.
COUNTED_TABLES = (
    "batches",
    "sheets",
    "students",
    "omr_answers",
    "profiles",
    "templates",
    "answer_keys",
    "sheet_flags",
    "reprocess_tasks",
    "answer_history",
)

# How long a read waits for a table that another session has locked whole,
# as a migration or an operator's VACUUM FULL does. After that the status
# marks the table as locked instead of waiting silently. Once one table
# was locked, the others wait only the shorter time, so that many locked
# tables cannot add up to a long wait.
LOCK_TIMEOUT_MS = 2000
LATER_LOCK_TIMEOUT_MS = 100


@dataclass(frozen=True)
class DatabaseStatus:
    """A snapshot of the database in use.

    Attributes:
        location: where it is (no password).
        server_version: for example ``"16.2"``.
        schema_version: the highest applied migration, 0 when never
            migrated, None when another session held schema_migrations
            locked.
        code_version: the highest migration this code knows.
        row_counts: table name to exact row count, or None when another
            session held the table locked. Tables that do not exist yet are
            left out, and all tables are while a migration runs.
        migration: the session migrating the database now, or None.
    """

    location: DatabaseLocation
    server_version: str
    schema_version: int | None
    code_version: int
    row_counts: dict[str, int | None]
    migration: MigrationHolder | None = None

    @property
    def schema_state(self) -> str:
        if self.migration is not None:
            return (
                f"a migration is running in server process {self.migration.pid}, "
                f"for {self.migration.seconds:.0f} s so far; run this again when "
                "it has finished"
            )
        if self.schema_version is None:
            return (
                "unknown, because another session holds the schema_migrations "
                "table locked; run this again later"
            )
        if self.schema_version == self.code_version:
            return "up to date"
        if self.schema_version < self.code_version:
            return "migrations pending: run 'omr-desktop db migrate'"
        return "newer than this OMR Desktop: install the newer version"


def collect_status(database: Database) -> DatabaseStatus:
    """Read the status of an open database."""
    with database.connect(autocommit=True) as conn:
        conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        migration = migration_holder(conn)
        try:
            schema_version: int | None = max(applied_migrations(conn), default=0)
        except psycopg.errors.LockNotAvailable:
            schema_version = None
            conn.execute(f"SET lock_timeout = {LATER_LOCK_TIMEOUT_MS}")
        return DatabaseStatus(
            location=database.location(),
            server_version=_server_version(conn),
            schema_version=schema_version,
            code_version=latest_version(),
            # A migration rewrites tables under an exclusive lock, so a count
            # would wait until it commits.
            row_counts={} if migration else _row_counts(conn),
            migration=migration,
        )


def _server_version(conn: psycopg.Connection) -> str:
    row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "unknown"


def _row_counts(conn: psycopg.Connection) -> dict[str, int | None]:
    counts: dict[str, int | None] = {}
    for table in COUNTED_TABLES:
        exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if not exists or exists[0] is None:
            continue
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        try:
            row = conn.execute(query).fetchone()
        except psycopg.errors.LockNotAvailable:
            counts[table] = None
            conn.execute(f"SET lock_timeout = {LATER_LOCK_TIMEOUT_MS}")
            continue
        counts[table] = int(row[0]) if row else 0
    return counts


def format_status(status: DatabaseStatus) -> str:
    """Render the status as the lines ``db status`` prints."""
    loc = status.location
    lines = [
        "Database:       "
        + ("embedded" if loc.kind == "embedded" else f"external (from {loc.source})"),
        f"Server:         PostgreSQL {status.server_version} at "
        f"{loc.host}:{loc.port}, database {loc.dbname!r}, user {loc.user!r}",
    ]
    if loc.data_dir is not None:
        lines.append(f"Data folder:    {loc.data_dir}")
    version = "unknown" if status.schema_version is None else status.schema_version
    lines.append(
        f"Schema version: {version} (this OMR Desktop: "
        f"{status.code_version}; {status.schema_state})"
    )
    if status.migration is not None:
        lines.append("Rows:           not counted while the migration runs")
        return "\n".join(lines)
    lines.append("Rows:")
    width = max((len(t) for t in status.row_counts), default=0)
    for table, count in status.row_counts.items():
        if count is None:
            lines.append(f"  {table:<{width}}  locked by another session, not counted")
        else:
            lines.append(f"  {table:<{width}}  {count:>10,}")
    return "\n".join(lines)
