"""Back up and restore the database in use with pg_dump, pg_restore and psql.

A backup is a pg_dump custom-format archive of the whole database. A restore
replaces the database's ``public`` schema with the archive's in a single
transaction: if any statement fails, the database is left as it was.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from omr_desktop import resources
from omr_desktop.db.database import Database
from omr_desktop.db.migrate import available_migrations
from omr_desktop.db.server_binaries import available_binaries

logger = logging.getLogger(__name__)

_VERSION_PATTERN = re.compile(r"\(PostgreSQL\)\s+(\d+)")

# Restoring a batch of 7,109 sheets takes well under a minute; an hour
# covers archives far larger than any workstation holds.
TOOL_TIMEOUT_S = 3600


class BackupError(RuntimeError):
    """A backup or restore failed; the database is unchanged."""


def backup(database: Database, target: Path) -> int:
    """Write a custom-format archive of the database to ``target``.

    The archive is written beside ``target`` first and renamed into place,
    so a failed backup never leaves a truncated file under that name.

    Returns:
        The archive's size in bytes.
    """
    server_major = _server_major(database)
    pg_dump = find_client_tool("pg_dump", server_major)
    target = target.expanduser().resolve()
    partial = target.with_name(target.name + ".partial")
    conninfo, password = _split_password(database.conninfo)
    done = _run(
        [
            pg_dump,
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            f"--file={partial}",
            "--dbname",
            conninfo,
        ],
        password,
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {_tail(done.stderr)}")
    partial.replace(target)
    size = target.stat().st_size
    logger.info(
        "Backed up %s to %s (%d bytes)", database.location().describe(), target, size
    )
    return size


def restore(database: Database, source: Path) -> None:
    """Replace the database's contents with the archive ``source``.

    Raises:
        BackupError: the file is not an archive, it comes from a newer
            OMR Desktop, or the restore failed (the database is unchanged).
    """
    source = source.expanduser().resolve()
    if not source.is_file():
        raise BackupError(f"The backup file {source} does not exist.")
    server_major = _server_major(database)
    pg_restore = find_client_tool("pg_restore", server_major)
    psql = find_client_tool("psql", server_major)
    _check_archive_versions(pg_restore, source)
    with tempfile.TemporaryDirectory(prefix="omr-restore-") as tmp:
        script = Path(tmp) / "restore.sql"
        done = _run(
            [
                pg_restore,
                "--no-owner",
                "--no-privileges",
                f"--file={script}",
                str(source),
            ]
        )
        if done.returncode != 0:
            raise BackupError(
                f"pg_restore could not read {source}: {_tail(done.stderr)}"
            )
        wrapper = Path(tmp) / "wrapper.sql"
        wrapper.write_text(
            "DROP SCHEMA public CASCADE;\nCREATE SCHEMA public;\n"
            f"\\i {_psql_quote(script)}\n",
            encoding="utf-8",
        )
        conninfo, password = _split_password(database.conninfo)
        done = _run(
            [
                psql,
                "--no-psqlrc",
                "--quiet",
                "--single-transaction",
                "-v",
                "ON_ERROR_STOP=1",
                f"--file={wrapper}",
                "--dbname",
                conninfo,
            ],
            password,
        )
    if done.returncode != 0:
        raise BackupError(
            f"Restoring {source} failed, and the database was left as it was: "
            f"{_tail(done.stderr)}"
        )
    logger.info("Restored %s from %s", database.location().describe(), source)


def find_client_tool(name: str, server_major: int) -> Path:
    """Find ``name`` (pg_dump, pg_restore, psql) able to talk to ``server_major``.

    pg_dump refuses servers newer than itself, so the tool's major version
    must be at least the server's; the oldest such tool is preferred, being
    the closest match.

    Raises:
        BackupError: no suitable tool is installed.
    """
    candidates = [b.tool(name) for b in available_binaries()]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    found: list[tuple[int, Path]] = []
    for path in candidates:
        major = _tool_major(path)
        if major is not None and major >= server_major:
            found.append((major, path))
    if not found:
        raise BackupError(
            f"No {name} of PostgreSQL {server_major} or newer was found. Install "
            f"the PostgreSQL {server_major} client tools, or set OMR_PG_BINDIR "
            "to a folder holding them."
        )
    return min(found)[1]


def _tool_major(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        output = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            env=resources.program_environment(),
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_PATTERN.search(output)
    return int(match.group(1)) if match else None


def _server_major(database: Database) -> int:
    with database.connect() as conn:
        return int(conn.info.server_version // 10000)


def _check_archive_versions(pg_restore: Path, source: Path) -> None:
    """Reject an archive whose schema is newer than this code's migrations."""
    done = _run(
        [
            pg_restore,
            "--data-only",
            "--table=schema_migrations",
            "--file=-",
            str(source),
        ]
    )
    if done.returncode != 0:
        raise BackupError(
            f"{source} is not a backup made by 'omr-desktop db backup' "
            f"(pg_restore: {_tail(done.stderr)})."
        )
    versions = _copied_versions(done.stdout)
    if not versions:
        raise BackupError(
            f"{source} contains no OMR Desktop schema (no schema_migrations rows)."
        )
    known = {m.version for m in available_migrations()}
    unknown = sorted(versions - known)
    if unknown:
        raise BackupError(
            f"{source} was made with schema version {max(versions)}, newer than "
            f"this OMR Desktop knows ({max(known)}). Restore it with a newer "
            "OMR Desktop."
        )


def _copied_versions(script: str) -> set[int]:
    versions: set[int] = set()
    in_copy = False
    for line in script.splitlines():
        if line.startswith("COPY ") and "schema_migrations" in line:
            in_copy = True
        elif in_copy and line == "\\.":
            in_copy = False
        elif in_copy and line:
            versions.add(int(line.split("\t", 1)[0]))
    return versions


def _split_password(conninfo: str) -> tuple[str, str | None]:
    """Take the password out of ``conninfo``.

    A password on a command line is visible to every local user in the
    process list; in the child's environment it is not.
    """
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    password = params.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **params), (
        None if password is None else str(password)
    )


def _run(
    args: list[str | Path], password: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in resources.program_environment().items()
        if not k.startswith("PG")
    }
    if password is not None:
        env["PGPASSWORD"] = password
    try:
        return subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackupError(f"{Path(str(args[0])).name} could not run: {exc}") from exc


def _psql_quote(path: Path) -> str:
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "no output"
