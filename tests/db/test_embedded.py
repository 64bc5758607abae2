"""The embedded PostgreSQL: create, reuse, share, recover, refuse."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from omr_desktop import resources
from omr_desktop.db.embedded import (
    CONFIG_FILE_NAME,
    PASSWORD_FILE_NAME,
    SERVER_SETTINGS,
    STATE_FILE_NAME,
    EmbeddedDatabaseError,
    EmbeddedServer,
    VersionMismatchError,
)
from omr_desktop.db.server_binaries import (
    ServerBinaries,
    available_binaries,
    find_server_binaries,
)
from omr_desktop.db.service_account import ServiceAccount, service_account
from tests.conftest import make_base_dir

pytestmark = [pytest.mark.db, pytest.mark.slow]

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def base_dir() -> Iterator[Path]:
    base = make_base_dir("omr-test-embedded-")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def server(base_dir: Path) -> Iterator[EmbeddedServer]:
    embedded = EmbeddedServer(base_dir / "data")
    yield embedded
    if (embedded.cluster_dir / "postmaster.pid").exists():
        embedded.stop()


def query_one(conninfo: str, query: str) -> object:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_first_start_creates_cluster_and_database(server: EmbeddedServer) -> None:
    running = server.start()

    assert running.started_here
    assert server.is_initialised()
    assert query_one(server.conninfo(), "SELECT current_database()") == "omr"
    state = json.loads((server.data_dir / STATE_FILE_NAME).read_text())
    assert state["postgresql_major"] == running.binaries.major
    assert (server.cluster_dir / "PG_VERSION").read_text().strip() == str(
        running.binaries.major
    )


def test_server_accepts_only_loopback_with_password(server: EmbeddedServer) -> None:
    running = server.start()
    password_file = server.data_dir / PASSWORD_FILE_NAME

    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert query_one(server.conninfo(), "SHOW listen_addresses") == "127.0.0.1"
    assert query_one(server.conninfo(), "SHOW unix_socket_directories") == ""
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(
            f"host=127.0.0.1 port={running.port} user=omr dbname=omr password=wrong"
        )


def test_start_writes_current_settings(server: EmbeddedServer) -> None:
    server.start()
    server.stop()
    # As an older version of OMR Desktop left it.
    (server.cluster_dir / CONFIG_FILE_NAME).write_text("shared_buffers = '128MB'\n")

    again = EmbeddedServer(server.data_dir)
    again.start()

    for name, value in SERVER_SETTINGS.items():
        setting = query_one(
            again.conninfo(), f"SELECT setting FROM pg_settings WHERE name = '{name}'"
        )
        displayed = query_one(again.conninfo(), f"SHOW {name}")
        assert value.strip("'") in (setting, displayed), name


def test_restart_keeps_data(server: EmbeddedServer) -> None:
    server.start()
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")
    server.stop()

    again_server = EmbeddedServer(server.data_dir)
    again = again_server.start()

    assert again.started_here
    assert query_one(again_server.conninfo(), "SELECT v FROM kept") == "still here"


def test_second_instance_shares_running_server(server: EmbeddedServer) -> None:
    first = server.start()
    second_server = EmbeddedServer(server.data_dir)

    second = second_server.start()

    assert not second.started_here
    assert second.pid == first.pid
    assert second.port == first.port
    with psycopg.connect(second_server.conninfo()):
        assert not server.stop_if_unused()
    assert second_server.stop_if_unused()
    assert not (server.cluster_dir / "postmaster.pid").exists()


def test_start_recovers_after_server_crash(server: EmbeddedServer) -> None:
    crashed = server.start()
    os.kill(crashed.pid, signal.SIGKILL)
    _wait_for_exit(crashed.pid)
    assert (server.cluster_dir / "postmaster.pid").exists()

    recovered_server = EmbeddedServer(server.data_dir)
    recovered = recovered_server.start()

    assert recovered.started_here
    assert recovered.pid != crashed.pid
    assert query_one(recovered_server.conninfo(), "SELECT 1") == 1


def test_stale_lock_of_reused_pid_is_removed(server: EmbeddedServer) -> None:
    server.start()
    server.stop()
    impostor = subprocess.Popen(["sleep", "60"])
    try:
        _write_fake_postmaster_pid(server.cluster_dir, impostor.pid)

        recovered = EmbeddedServer(server.data_dir).start()

        assert recovered.started_here
        assert recovered.pid != impostor.pid
    finally:
        impostor.kill()
        impostor.wait()


def test_cluster_of_other_major_version_is_rejected(server: EmbeddedServer) -> None:
    server.start()
    server.stop()
    (server.cluster_dir / "PG_VERSION").write_text("11\n")

    with pytest.raises(VersionMismatchError, match="PostgreSQL 11"):
        EmbeddedServer(server.data_dir).start()


def test_non_cluster_folder_is_rejected(base_dir: Path) -> None:
    cluster = base_dir / "data" / "pgdata"
    cluster.mkdir(parents=True)
    (cluster / "notes.txt").write_text("not a database")

    with pytest.raises(EmbeddedDatabaseError, match="no PG_VERSION"):
        EmbeddedServer(base_dir / "data").start()


def test_machine_binaries_run_the_embedded_database(base_dir: Path) -> None:
    system = [b for b in available_binaries() if b.source == "system"]
    if not system:
        pytest.skip("this machine has no PostgreSQL server binaries of its own")
    embedded = EmbeddedServer(base_dir / "data", binaries=system[0])
    try:
        running = embedded.start()

        assert running.binaries.source == "system"
        version = query_one(embedded.conninfo(), "SHOW server_version_num")
        assert int(str(version)) // 10000 == system[0].major
    finally:
        embedded.stop()


@pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
def test_embedded_database_runs_as_ordinary_user(base_dir: Path) -> None:
    """Start, use and stop the server from a process without root rights.

    The child drops to the server's unprivileged account before it touches
    the data folder, so initdb and pg_ctl run with no user switch at all, as
    they do for an editor on a workstation.
    """
    account = service_account()
    assert account.uid is not None
    assert account.gid is not None
    home = base_dir / "home"
    account.make_owned_dir(home, 0o755)
    binaries = EmbeddedServer(base_dir / "root-data")._reachable_binaries(
        find_server_binaries(), account
    )
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        _run_as_ordinary_user(account, home, binaries, write_fd)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0, report
    result = json.loads(report)
    assert result["uid"] == account.uid
    assert result["database"] == "omr"
    assert result["stopped"] is True
    assert (home / "data" / "pgdata").stat().st_uid == account.uid


@pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
def test_unreachable_pgserver_binaries_are_copied_and_run(base_dir: Path) -> None:
    """Copy the wheel's PostgreSQL with its libraries when the account cannot reach it.

    This is root running a bundle or a virtual environment kept in a mode
    0700 folder: initdb loads libpq from the wheel's pgserver.libs through
    a relative RPATH, so a copy without that folder cannot create a cluster.
    """
    install = resources.pgserver_install_dir()
    if install is None or not resources.pgserver_libs_dir(install).is_dir():
        pytest.skip("the pgserver wheel with its pgserver.libs is not installed")
    hidden = base_dir / "private"
    hidden.mkdir(mode=0o700)
    shutil.copytree(install, hidden / resources.PGSERVER_INSTALL_PATH)
    shutil.copytree(
        resources.pgserver_libs_dir(install), hidden / resources.PGSERVER_LIBS_PATH
    )
    found = find_server_binaries()
    hidden_binaries = ServerBinaries(
        hidden / resources.PGSERVER_INSTALL_PATH / "bin",
        found.version,
        found.major,
        "pgserver",
    )
    embedded = EmbeddedServer(base_dir / "data", binaries=hidden_binaries)
    try:
        running = embedded.start()

        assert running.binaries.bin_dir.is_relative_to(base_dir / "data")
        assert query_one(embedded.conninfo(), "SELECT current_database()") == "omr"
    finally:
        embedded.stop()


def _run_as_ordinary_user(
    account: ServiceAccount, home: Path, binaries: object, write_fd: int
) -> None:
    code = 1
    try:
        os.setgroups([])
        assert account.gid is not None
        assert account.uid is not None
        os.setgid(account.gid)
        os.setuid(account.uid)
        os.environ["HOME"] = str(home)
        embedded = EmbeddedServer(home / "data", binaries=binaries)  # type: ignore[arg-type]
        embedded.start()
        database = query_one(embedded.conninfo(), "SELECT current_database()")
        stopped = embedded.stop_if_unused()
        report = {"uid": os.getuid(), "database": database, "stopped": stopped}
        os.write(write_fd, json.dumps(report).encode())
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        os.write(write_fd, repr(exc).encode())
    finally:
        os._exit(code)


def _wait_for_exit(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _write_fake_postmaster_pid(cluster_dir: Path, pid: int) -> None:
    lines = [
        str(pid),
        str(cluster_dir),
        "1700000000",
        "5999",
        "",
        "127.0.0.1",
        "  1234567     65536",
        "ready   ",
    ]
    path = cluster_dir / "postmaster.pid"
    path.write_text("\n".join(lines) + "\n")
