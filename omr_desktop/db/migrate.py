"""Versioned SQL migrations: apply in order, each once, each in a transaction.

Migrations are the files ``NNNN_name.sql`` in ``omr_desktop/db/migrations``;
``NNNN`` is the version. The table ``schema_migrations`` records each applied
version with a checksum of its text, so an applied file that was edited
afterwards is detected instead of silently diverging.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.pq import TransactionStatus

from omr_desktop.resources import migrations_dir

logger = logging.getLogger(__name__)

_FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# Any constant works; it only has to be the same in every process that
# migrates, so that two app instances starting at once take turns.
_MIGRATION_LOCK_KEY = 0x4F4D5231  # "OMR1"

# Writers hold this key shared until they commit, and a migration takes it
# exclusively before its first statement. So a migration waits for the
# writes in progress, and a write that starts during a migration waits for
# it and then finds the new version (`check_not_newer`). A key of its own,
# so that a write does not make `db status` report a migration or make a
# second app instance wait at start-up when nothing is left to apply.
_WRITE_LOCK_KEY = 0x4F4D5257  # "OMRW"

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


# Other sessions holding an advisory lock key, oldest transaction first. A
# one-number key of 32 bits shows in pg_locks as classid 0, objid the key,
# objsubid 1.
_KEY_HOLDERS = """
SELECT l.pid, extract(epoch FROM now() - a.xact_start)
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
        SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.classid = 0 AND l.objid = %s AND l.objsubid = 1
    AND l.pid <> pg_backend_pid()
ORDER BY a.xact_start NULLS LAST, l.pid
"""


@dataclass(frozen=True)
class MigrationHolder:
    """A session that holds the migration lock, so is migrating the database.

    Attributes:
        pid: its server process id.
        seconds: the age of its transaction, or 0 when the server hides it
            (a session of another role).
    """

    pid: int
    seconds: float


def migration_holder(conn: psycopg.Connection) -> MigrationHolder | None:
    """Return the session migrating this database now, or None."""
    row = conn.execute(_KEY_HOLDERS, (_MIGRATION_LOCK_KEY,)).fetchone()
    if row is None:
        return None
    return MigrationHolder(pid=int(row[0]), seconds=float(row[1] or 0.0))


class MigrationError(RuntimeError):
    """The database schema cannot be brought to this version of the code."""


class SchemaTooNewError(MigrationError):
    """The database was migrated by a newer OMR Desktop than this one."""


class SchemaNotMigratedError(MigrationError):
    """The database lacks migrations this code needs."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def available_migrations(folder: Path | None = None) -> list[Migration]:
    """Read the migration files, sorted by version.

    Raises:
        MigrationError: a file name does not match ``NNNN_name.sql`` or two
            files share a version.
    """
    folder = folder or migrations_dir()
    migrations: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError(
                f"Invalid migration file name {path.name!r}: use NNNN_name.sql."
            )
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(
                f"Two migrations have version {version}: "
                f"{migrations[version].path.name} and {path.name}."
            )
        sql = path.read_text(encoding="utf-8")
        migrations[version] = Migration(version, match.group(2), path, sql)
    return [migrations[v] for v in sorted(migrations)]


def latest_version(folder: Path | None = None) -> int:
    """Return the highest migration version this code has (0 if none)."""
    migrations = available_migrations(folder)
    return migrations[-1].version if migrations else 0


def applied_migrations(conn: psycopg.Connection) -> dict[int, str]:
    """Return {version: checksum} of the applied migrations; {} on a new database."""
    exists = conn.execute(
        "SELECT to_regclass('schema_migrations') IS NOT NULL"
    ).fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return {int(version): str(checksum) for version, checksum in rows}


def schema_version(conn: psycopg.Connection) -> int:
    """Return the highest applied version, 0 for a database never migrated."""
    applied = applied_migrations(conn)
    return max(applied) if applied else 0


def migrate(conn: psycopg.Connection, folder: Path | None = None) -> list[Migration]:
    """Apply every pending migration, each in its own transaction.

    ``conn`` must be in autocommit mode; this function opens the transactions.
    Running it again on a migrated database applies nothing.

    Returns:
        The migrations applied by this call.

    Raises:
        SchemaTooNewError: the database has a version this code does not know.
        MigrationError: an applied migration's text has changed since.
    """
    if not conn.autocommit:
        raise MigrationError("migrate() needs a connection in autocommit mode.")
    migrations = available_migrations(folder)
    applied_now: list[Migration] = []
    with conn.transaction():
        _wait_for_migration_lock(conn)
        conn.execute(_CREATE_TABLE)
    _warn_while_table_locked(conn)
    for migration in migrations:
        if _apply_one(conn, migration, migrations):
            applied_now.append(migration)
    return applied_now


def _wait_for_migration_lock(conn: psycopg.Connection) -> None:
    """Take the migration lock, logging a warning while another process holds it."""
    row = conn.execute(
        "SELECT pg_try_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,)
    ).fetchone()
    if row and row[0]:
        return
    holder = migration_holder(conn)
    logger.warning(
        "Another process is migrating this database (server process %s, "
        "for %.0f s); waiting for it to finish.",
        holder.pid if holder else "unknown",
        holder.seconds if holder else 0.0,
    )
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))


def _warn_while_table_locked(conn: psycopg.Connection) -> None:
    """Log a warning when another session holds schema_migrations locked.

    An operator's LOCK TABLE, for example, makes every migration wait
    without holding the migration lock, so `_wait_for_migration_lock`
    cannot name it.
    """
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = {_LOCKED_TABLE_WAIT_MS}")
            conn.execute("LOCK TABLE schema_migrations IN ACCESS SHARE MODE")
    except psycopg.errors.LockNotAvailable:
        row = conn.execute(
            "SELECT array_agg(pid) FROM pg_locks WHERE relation ="
            " 'schema_migrations'::regclass AND granted AND pid <> pg_backend_pid()"
        ).fetchone()
        holders = ", ".join(str(pid) for pid in (row[0] if row and row[0] else []))
        logger.warning(
            "Another session (server process %s) has locked the "
            "schema_migrations table; waiting for it to finish.",
            holders or "unknown",
        )


def _wait_for_writes(conn: psycopg.Connection, migration: Migration) -> None:
    """Take the write lock exclusively, logging which writes it waits for."""
    row = conn.execute(
        "SELECT pg_try_advisory_xact_lock(%s)", (_WRITE_LOCK_KEY,)
    ).fetchone()
    if row and row[0]:
        return
    pids = [int(r[0]) for r in conn.execute(_KEY_HOLDERS, (_WRITE_LOCK_KEY,))]
    logger.warning(
        "Migration %04d_%s waits for %s in progress (server process %s) to "
        "finish, such as a reprocess or an import.",
        migration.version,
        migration.name,
        "a write" if len(pids) <= 1 else f"{len(pids)} writes",
        ", ".join(str(pid) for pid in pids) or "unknown",
    )
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK_KEY,))


# How long migrate waits for schema_migrations before it logs why it waits.
_LOCKED_TABLE_WAIT_MS = 2000


def _apply_one(
    conn: psycopg.Connection, migration: Migration, known: list[Migration]
) -> bool:
    with conn.transaction():
        # Taken inside each transaction, so a second process waits here and
        # then sees the first one's work when it reads schema_migrations.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        applied = applied_migrations(conn)
        _check_known(applied, known)
        if migration.version in applied:
            return False
        _wait_for_writes(conn, migration)
        logger.info("Applying migration %04d_%s", migration.version, migration.name)

        # Log the NOTICEs a migration raises, such as how many rows it archived.
        def log_notice(diag: psycopg.errors.Diagnostic) -> None:
            logger.warning(
                "Migration %04d_%s: %s",
                migration.version,
                migration.name,
                diag.message_primary,
            )

        conn.add_notice_handler(log_notice)
        try:
            conn.execute(migration.sql.encode("utf-8"))
        finally:
            conn.remove_notice_handler(log_notice)
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) "
            "VALUES (%s, %s, %s)",
            (migration.version, migration.name, migration.checksum),
        )
    return True


def _check_known(applied: dict[int, str], known: list[Migration]) -> None:
    by_version = {m.version: m for m in known}
    newest_known = max(by_version, default=0)
    unknown = sorted(v for v in applied if v not in by_version)
    if unknown:
        raise SchemaTooNewError(
            f"The database schema is at version {max(applied)}, but this "
            f"OMR Desktop knows versions up to {newest_known}. The database "
            "was updated by a newer OMR Desktop: install that version or "
            "newer, or use another database."
        )
    for version, checksum in applied.items():
        if by_version[version].checksum != checksum:
            raise MigrationError(
                f"Migration {by_version[version].path.name} was changed after "
                "it was applied to this database. Restore the original file; "
                "schema changes go into a new migration."
            )


def check_not_newer(conn: psycopg.Connection, *, hold: bool = True) -> None:
    """Raise if a newer OMR Desktop migrated the database since this one started.

    Writers call this first in their transaction: the newer migration may
    have changed the tables they write, and their statements would fail
    with messages that do not say why. With ``hold``, the check also keeps
    migrations out until the transaction ends: it takes the write lock
    shared, so a migration started later waits for this write to commit or
    roll back, and this check waits for a migration already running.

    Raises:
        SchemaTooNewError: the database's schema version is newer than this
            code's.
    """
    if hold:
        if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
            raise MigrationError(
                "check_not_newer(hold=True) was called outside a transaction: "
                "call it inside the transaction of the write."
            )
        conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (_WRITE_LOCK_KEY,))
    version = schema_version(conn)
    known = _known_version()
    if version > known:
        raise SchemaTooNewError(
            f"The database is at schema version {version}, newer than this "
            f"OMR Desktop knows ({known}): a newer OMR Desktop migrated it "
            "while this one was running. No sheet, answer or score was "
            "changed. Install the newer version here too, then try again."
        )


@functools.cache
def _known_version() -> int:
    # The installed migration files do not change while the program runs.
    return latest_version()


def check_schema(conn: psycopg.Connection, folder: Path | None = None) -> int:
    """Check that the database is at exactly the code's schema version.

    Returns:
        The schema version.

    Raises:
        SchemaTooNewError: the database is newer than the code.
        SchemaNotMigratedError: migrations are pending.
    """
    known = available_migrations(folder)
    applied = applied_migrations(conn)
    _check_known(applied, known)
    pending = [m for m in known if m.version not in applied]
    if pending:
        names = ", ".join(m.path.name for m in pending)
        raise SchemaNotMigratedError(
            f"The database lacks migrations {names}. Run 'omr-desktop db migrate'."
        )
    return max(applied) if applied else 0
