"""The embedded database: a private PostgreSQL cluster in the data folder.

Layout inside the data folder::

    pgdata/              the cluster (owned by the server's account)
    pgdata/server.log    the server's log
    embedded.json        binaries, major version and port of the last start
    embedded-password    the superuser's password (mode 0600)
    embedded.lock        taken while a process initialises, starts or stops

The cluster is created on first start, started when the application starts,
shared with a second application instance that finds it running, and
stopped by the last instance to leave. It listens on 127.0.0.1 only, with
password (SCRAM) authentication and no Unix socket, so other local users
cannot reach it without the password file.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from omr_desktop import resources
from omr_desktop.db.file_lock import FileLock
from omr_desktop.db.server_binaries import (
    ServerBinaries,
    ServerBinariesError,
    find_server_binaries,
)
from omr_desktop.db.service_account import ServiceAccount, service_account

logger = logging.getLogger(__name__)

CLUSTER_DIR_NAME = "pgdata"
STATE_FILE_NAME = "embedded.json"
PASSWORD_FILE_NAME = "embedded-password"
LOCK_FILE_NAME = "embedded.lock"
BINARIES_CACHE_DIR_NAME = "server-binaries"
SUPERUSER = "omr"
DATABASE = "omr"
CONFIG_FILE_NAME = "omr-desktop.conf"

# pg_ctl's own default wait is 60 s; a first start on a slow disk can need it.
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60

# Settings for bulk reprocess loads on a workstation. shared_buffers caches
# most of a 7,109-sheet batch's answers (230 MB of rows at fillfactor 50 and a
# 56 MB primary key); at 1 GB a reprocess changing all of them took as long.
# max_wal_size keeps a 1 M-row UPDATE from forcing checkpoints mid-load, and
# the work_mem values let the staging join and index builds run in memory.
# The background writer and the WAL writer wake every 10 ms instead of 200,
# and the background writer may write up to 1,000 buffers a round. During
# a reprocess's UPDATE they then write dirty buffers on the idle core, so
# the UPDATE's own backend less often has to flush the WAL and write a
# buffer before it can reuse it. Both are needed: either alone gained
# nothing, together a million-row UPDATE took 0.3-0.6 s less after a
# restart (3.8-4.0 s). Both sleep longer when the server is idle. Every
# start writes these settings again, so an existing cluster gets them too.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "50",
    "shared_buffers": "'256MB'",
    "work_mem": "'32MB'",
    "maintenance_work_mem": "'256MB'",
    "max_wal_size": "'4GB'",
    "checkpoint_timeout": "'15min'",
    "bgwriter_delay": "'10ms'",
    "bgwriter_lru_maxpages": "1000",
    "bgwriter_lru_multiplier": "10",
    "wal_writer_delay": "'10ms'",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] '",
}


class EmbeddedDatabaseError(RuntimeError):
    """The embedded database cannot be created, started or stopped."""


class DataFolderInUseError(EmbeddedDatabaseError):
    """The cluster is locked by a process that is not a working server."""


class VersionMismatchError(EmbeddedDatabaseError):
    """The cluster was made by another PostgreSQL major version."""


@dataclass(frozen=True)
class RunningServer:
    """A running embedded server.

    Attributes:
        pid: the postmaster's process id.
        port: its TCP port on 127.0.0.1.
        binaries: the binaries that serve this cluster.
        started_here: whether this process started it.
    """

    pid: int
    port: int
    binaries: ServerBinaries
    started_here: bool


class EmbeddedServer:
    """Create, start, share and stop the cluster in one data folder.

    Not thread-safe; one object per process and data folder. Several
    processes may use the same folder: they serialise on ``embedded.lock``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        binaries: ServerBinaries | None = None,
        account: ServiceAccount | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.cluster_dir = data_dir / CLUSTER_DIR_NAME
        self._binaries = binaries
        self._account = account
        self._running: RunningServer | None = None

    @property
    def running(self) -> RunningServer | None:
        return self._running

    @property
    def log_file(self) -> Path:
        return self.cluster_dir / "server.log"

    def is_initialised(self) -> bool:
        return (self.cluster_dir / "PG_VERSION").is_file()

    def start(self) -> RunningServer:
        """Make sure the server runs and the database exists; return the server.

        Creates the cluster on first use. Reuses a server another process
        started. Recovers a lock file left behind by a crash.

        Raises:
            EmbeddedDatabaseError: with what went wrong and what to do.
        """
        self._make_data_dir()
        with FileLock(self.data_dir / LOCK_FILE_NAME):
            account = self._account_or_default()
            self._check_reachable(account)
            binaries = self._binaries_for_cluster(account)
            if not self.is_initialised():
                self._initdb(binaries, account)
            running = self._find_running(binaries, account)
            if running is None:
                self._write_settings(account)
                running = self._start_server(binaries, account)
            self._ensure_database(running.port)
            self._write_state(running)
        self._running = running
        return running

    def conninfo(self, dbname: str = DATABASE) -> str:
        """Return a libpq connection string for the running server."""
        if self._running is None:
            raise EmbeddedDatabaseError("The embedded database is not started.")
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1",
            port=str(self._running.port),
            user=SUPERUSER,
            password=self._read_password(),
            dbname=dbname,
            application_name="omr-desktop",
        )

    def stop_if_unused(self) -> bool:
        """Stop the server unless another client is connected; return True if stopped.

        The check and the stop happen under the data folder's lock, so an
        instance that is starting up either connects before the check (and
        keeps the server alive) or finds it stopped and starts it again.
        """
        if self._running is None:
            return False
        with FileLock(self.data_dir / LOCK_FILE_NAME):
            others = self._count_other_clients()
            if others:
                logger.info(
                    "Leaving the embedded database running: %d other client(s)",
                    others,
                )
                return False
            self._pg_ctl_stop()
        self._running = None
        return True

    def stop(self) -> None:
        """Stop the server now (fast shutdown: open transactions roll back)."""
        with FileLock(self.data_dir / LOCK_FILE_NAME):
            self._pg_ctl_stop()
        self._running = None

    # -- Folders, accounts and binaries ---------------------------------

    def _make_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedDatabaseError(
                f"Cannot create the data folder {self.data_dir}: {exc}. "
                "Set OMR_DATA_DIR to a folder you can write."
            ) from exc

    def _account_or_default(self) -> ServiceAccount:
        if self._account is None:
            self._account = service_account()
        return self._account

    def _check_reachable(self, account: ServiceAccount) -> None:
        if account.switches_user:
            # The server's account must search down to the cluster folder.
            self.data_dir.chmod(self.data_dir.stat().st_mode | 0o011)
        blocked = account.unreachable_parent(self.cluster_dir)
        if blocked is not None:
            raise EmbeddedDatabaseError(
                f"The embedded PostgreSQL runs as the user {account.name!r}, "
                f"which cannot enter {blocked}, a folder above the data folder "
                f"{self.data_dir}. Set OMR_DATA_DIR to a folder outside it "
                "(the default for root is /var/lib/omr-desktop)."
            )

    def _binaries_for_cluster(self, account: ServiceAccount) -> ServerBinaries:
        major = self._cluster_major()
        if self._binaries is not None:
            binaries = self._binaries
            if major is not None and binaries.major != major:
                raise VersionMismatchError(
                    _mismatch_message(self.cluster_dir, major, binaries)
                )
        else:
            try:
                binaries = find_server_binaries(major)
            except ServerBinariesError as exc:
                error = EmbeddedDatabaseError if major is None else VersionMismatchError
                raise error(str(exc)) from exc
        return self._reachable_binaries(binaries, account)

    def _cluster_major(self) -> int | None:
        version_file = self.cluster_dir / "PG_VERSION"
        if not version_file.is_file():
            return None
        text = version_file.read_text(encoding="ascii").strip()
        try:
            return int(text.split(".")[0])
        except ValueError as exc:
            raise EmbeddedDatabaseError(
                f"{version_file} holds {text!r}, not a PostgreSQL version. "
                "The cluster folder is damaged: restore it from a backup or "
                "move it aside."
            ) from exc

    def _reachable_binaries(
        self, binaries: ServerBinaries, account: ServiceAccount
    ) -> ServerBinaries:
        """Return binaries the account can run, copying them if it cannot.

        The pgserver wheel's binaries sit in the virtual environment or the
        PyInstaller bundle, which for root is often under a folder other
        users cannot enter. PostgreSQL finds its lib/ and share/ folders
        relative to its bin/, so a copy of the whole installation runs from
        anywhere, provided the wheel's shared libraries keep their place
        beside it.
        """
        if not account.switches_user:
            return binaries
        if account.unreachable_parent(binaries.tool("postgres")) is None:
            return binaries
        install_dir = binaries.bin_dir.parent
        target = (
            self.data_dir
            / BINARIES_CACHE_DIR_NAME
            / (f"{binaries.source}-{binaries.version}")
        )
        copies = _installation_copies(install_dir, target)
        for source, copy in copies.items():
            finished = copy / "bin" if source == install_dir else copy
            if finished.is_dir():
                continue
            logger.info("Copying %s to %s for the server's account", source, copy)
            partial = copy.with_name(copy.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, partial, symlinks=True)
            partial.rename(copy)
        copied_install = copies[install_dir]
        # The account must search every folder from the data folder down.
        folder = copied_install
        while folder != self.data_dir:
            folder.chmod(0o755)
            folder = folder.parent
        return ServerBinaries(
            copied_install / "bin", binaries.version, binaries.major, binaries.source
        )

    # -- Creating the cluster -------------------------------------------

    def _initdb(self, binaries: ServerBinaries, account: ServiceAccount) -> None:
        if self.cluster_dir.exists() and any(self.cluster_dir.iterdir()):
            raise EmbeddedDatabaseError(
                f"{self.cluster_dir} is not empty but holds no PostgreSQL cluster "
                "(no PG_VERSION file). Move it aside; OMR Desktop creates a new "
                "cluster there."
            )
        logger.info(
            "Creating the embedded database in %s with %s",
            self.cluster_dir,
            binaries.describe(),
        )
        password = self._new_password()
        account.make_owned_dir(self.cluster_dir)
        pwfile = self.data_dir / ".initdb-password"
        try:
            pwfile.write_text(password + "\n", encoding="utf-8")
            pwfile.chmod(0o600)
            account.chown(pwfile)
            done = account.run(
                [
                    binaries.tool("initdb"),
                    "-D",
                    self.cluster_dir,
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-instructions",
                ],
                cwd=self.cluster_dir,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise EmbeddedDatabaseError(
                f"initdb failed for {self.cluster_dir} (exit {done.returncode}): "
                f"{_tail(done.stderr or done.stdout)}"
            )
        # start() writes the settings file before the first start.
        self._include_settings()

    def _new_password(self) -> str:
        password = secrets.token_urlsafe(24)
        path = self.data_dir / PASSWORD_FILE_NAME
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(password)
        return password

    def _read_password(self) -> str:
        path = self.data_dir / PASSWORD_FILE_NAME
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise EmbeddedDatabaseError(
                f"Cannot read the embedded database's password file {path}: {exc}. "
                "Run OMR Desktop as the user who created the data folder."
            ) from exc

    def _include_settings(self) -> None:
        """Make postgresql.conf read the file that `_write_settings` writes."""
        with (self.cluster_dir / "postgresql.conf").open("a", encoding="utf-8") as f:
            f.write(f"\ninclude_if_exists = '{CONFIG_FILE_NAME}'\n")

    def _write_settings(self, account: ServiceAccount) -> None:
        """Write SERVER_SETTINGS to the file that postgresql.conf includes.

        ALTER SYSTEM settings still win: postgresql.auto.conf is read last.
        """
        lines = [f"{key} = {value}" for key, value in SERVER_SETTINGS.items()]
        config = self.cluster_dir / CONFIG_FILE_NAME
        config.write_text(
            "# Written by OMR Desktop for its embedded database at each start.\n"
            + "\n".join(lines)
            + "\n",
            encoding="utf-8",
        )
        account.chown(config)

    # -- Finding and starting the server --------------------------------

    def _find_running(
        self, binaries: ServerBinaries, account: ServiceAccount
    ) -> RunningServer | None:
        lock = _read_postmaster_pid(self.cluster_dir)
        if lock is None:
            return None
        pid, port, state = lock
        if not _is_postgres_process(pid):
            logger.warning(
                "Removing the stale lock file of %s (PID %d is not a running "
                "PostgreSQL server)",
                self.cluster_dir,
                pid,
            )
            (self.cluster_dir / "postmaster.pid").unlink(missing_ok=True)
            return None
        if state == "stopping":
            self._wait_until_stopped(pid)
            return None
        self._wait_until_accepting(port, pid)
        logger.info(
            "Using the embedded database already running (PID %d, port %d)", pid, port
        )
        return RunningServer(pid, port, binaries, started_here=False)

    def _start_server(
        self, binaries: ServerBinaries, account: ServiceAccount
    ) -> RunningServer:
        last_error = ""
        # Retries cover a port taken between choosing and binding it, and the
        # shared memory of a crashed server whose children are still exiting.
        for attempt in range(4):
            port = self._choose_port()
            done = account.run(
                [
                    binaries.tool("pg_ctl"),
                    "start",
                    "-D",
                    self.cluster_dir,
                    "-l",
                    self.log_file,
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "-o",
                    f"-p {port}",
                ],
                cwd=self.cluster_dir,
                timeout_s=START_TIMEOUT_S + 30,
                new_session=True,
            )
            lock = _read_postmaster_pid(self.cluster_dir)
            if done.returncode == 0 and lock is not None:
                logger.info(
                    "Started the embedded database (PID %d, port %d)", lock[0], lock[1]
                )
                return RunningServer(lock[0], lock[1], binaries, started_here=True)
            last_error = _tail(self._log_tail() or done.stderr or done.stdout)
            logger.warning(
                "Starting the embedded database failed (attempt %d): %s",
                attempt + 1,
                last_error,
            )
            time.sleep(1.0 + attempt)
        raise EmbeddedDatabaseError(
            f"The embedded database in {self.cluster_dir} did not start: "
            f"{last_error}. The server log is {self.log_file}."
        )

    def _choose_port(self) -> int:
        previous = self._read_state().get("port")
        if isinstance(previous, int) and _port_is_free(previous):
            return previous
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])

    def _wait_until_accepting(self, port: int, pid: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(self._admin_conninfo(port), connect_timeout=5):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise DataFolderInUseError(
                        f"The data folder {self.data_dir} is in use by PostgreSQL "
                        f"PID {pid} on port {port}, which does not accept "
                        f"connections ({exc}). Stop that process, or use another "
                        "data folder with OMR_DATA_DIR."
                    ) from exc
                time.sleep(0.5)

    def _wait_until_stopped(self, pid: int) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _is_postgres_process(pid):
            if time.monotonic() > deadline:
                raise DataFolderInUseError(
                    f"The embedded database (PID {pid}) has been shutting down "
                    f"for {STOP_TIMEOUT_S} s. Wait for it, or stop that process."
                )
            time.sleep(0.2)

    def _ensure_database(self, port: int) -> None:
        with psycopg.connect(self._admin_conninfo(port), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if not exists:
                logger.info("Creating database %s in the embedded server", DATABASE)
                conn.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE))
                )

    def _admin_conninfo(self, port: int) -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1",
            port=str(port),
            user=SUPERUSER,
            password=self._read_password(),
            dbname="postgres",
            application_name="omr-desktop-admin",
        )

    # -- Stopping --------------------------------------------------------

    def _count_other_clients(self) -> int:
        assert self._running is not None
        try:
            with psycopg.connect(
                self._admin_conninfo(self._running.port), connect_timeout=5
            ) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()"
                ).fetchone()
        except psycopg.OperationalError:
            return 0
        return int(row[0]) if row else 0

    def _pg_ctl_stop(self) -> None:
        if _read_postmaster_pid(self.cluster_dir) is None:
            return
        binaries = self._binaries_for_cluster(self._account_or_default())
        done = self._account_or_default().run(
            [
                binaries.tool("pg_ctl"),
                "stop",
                "-D",
                self.cluster_dir,
                "-m",
                "fast",
                "-w",
                "-t",
                str(STOP_TIMEOUT_S),
            ],
            cwd=self.cluster_dir,
            timeout_s=STOP_TIMEOUT_S + 30,
        )
        if done.returncode != 0 and _read_postmaster_pid(self.cluster_dir):
            raise EmbeddedDatabaseError(
                f"Stopping the embedded database failed: {_tail(done.stderr)}"
            )
        logger.info("Stopped the embedded database in %s", self.cluster_dir)

    # -- State file ------------------------------------------------------

    def _read_state(self) -> dict[str, object]:
        try:
            data = json.loads((self.data_dir / STATE_FILE_NAME).read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(self, running: RunningServer) -> None:
        state = {
            "postgresql_major": running.binaries.major,
            "postgresql_version": running.binaries.version,
            "binaries": str(running.binaries.bin_dir),
            "binaries_source": running.binaries.source,
            "port": running.port,
            "superuser": SUPERUSER,
            "database": DATABASE,
        }
        path = self.data_dir / STATE_FILE_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        tmp.replace(path)

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


def _installation_copies(install_dir: Path, target: Path) -> dict[Path, Path]:
    """Map the folders of an installation to where their copies go under ``target``.

    A pgserver installation has a sibling folder of shared libraries that
    its tools find by a relative RPATH, so both are copied with that layout
    kept. Any other installation is one folder.
    """
    libs_dir = resources.pgserver_libs_dir(install_dir)
    if not libs_dir.is_dir():
        return {install_dir: target}
    return {
        libs_dir: target / resources.PGSERVER_LIBS_PATH,
        install_dir: target / resources.PGSERVER_INSTALL_PATH,
    }


def _mismatch_message(cluster_dir: Path, major: int, binaries: ServerBinaries) -> str:
    return (
        f"The embedded database in {cluster_dir} was created by PostgreSQL "
        f"{major}, but the configured binaries are {binaries.describe()}. "
        f"Point OMR_PG_BINDIR at PostgreSQL {major} binaries, or move the data "
        "folder aside to start a new, empty database."
    )


def _read_postmaster_pid(cluster_dir: Path) -> tuple[int, int, str] | None:
    """Return (pid, port, state) from ``postmaster.pid``, or None without one.

    The file's lines are fixed by PostgreSQL: 1 PID, 2 data folder, 3 start
    time, 4 port, 5 socket folder, 6 listen address, 7 shared memory key,
    8 status (``starting``, ``ready``, ``stopping``; absent while starting).
    """
    try:
        lines = (cluster_dir / "postmaster.pid").read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        pid, port = int(lines[0]), int(lines[3])
    except (IndexError, ValueError):
        # A file cut short by a crash mid-write: treat as stale.
        return (0, 0, "")
    state = lines[7].strip() if len(lines) > 7 else "starting"
    return pid, port, state


def _is_postgres_process(pid: int) -> bool:
    """Tell whether ``pid`` is a running PostgreSQL server process."""
    if pid <= 0:
        return False
    proc_exe = Path(f"/proc/{pid}/exe")
    if Path("/proc/self").exists():
        try:
            name = Path(os.readlink(proc_exe)).name
        except FileNotFoundError:
            return False
        except PermissionError:
            # Another user's process: it exists, and only the server's
            # account or root would own the cluster's lock file.
            return True
        return name.startswith(("postgres", "postmaster"))
    if sys.platform == "win32":
        # TODO(Windows workstations): only tells that the pid exists; a pid
        # reused after a crash keeps the lock until the file is removed by hand.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # PostgreSQL binds with SO_REUSEADDR too, so a port whose last
        # connections linger in TIME_WAIT after a stop still counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:])
