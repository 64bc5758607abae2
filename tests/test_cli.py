"""The omr-desktop command as a user runs it: version, db status, migrate, backup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from omr_desktop.cli import main

pytestmark = pytest.mark.db


@pytest.fixture
def use_database(
    db_conninfo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Point the command at this test's database and a private data folder."""
    monkeypatch.setenv("OMR_DATABASE_URL", db_conninfo)
    monkeypatch.setenv("OMR_DATA_DIR", str(tmp_path / "data"))
    return db_conninfo


def test_version_prints_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from omr_desktop import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])

    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"omr-desktop {__version__}"


def test_invalid_log_level_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--log-level", "LOUD", "db", "status"])

    assert exited.value.code == 2
    assert "Invalid log level 'LOUD'" in capsys.readouterr().err


def test_db_status_shows_schema_and_rows_without_password(
    use_database: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = psycopg.conninfo.conninfo_to_dict(use_database)
    # The test server's own password when it has one; a server with trust
    # authentication ignores the made-up one.
    password = str(params.setdefault("password", "s3cret-Pa55"))
    monkeypatch.setenv("OMR_DATABASE_URL", psycopg.conninfo.make_conninfo(**params))

    assert main(["db", "status"]) == 0

    out = capsys.readouterr().out
    assert "external (from environment)" in out
    assert "up to date" in out
    assert "profiles" in out
    assert password not in out


def test_db_migrate_twice_applies_nothing_the_second_time(
    use_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "migrate"]) == 0
    assert "Nothing to apply." in capsys.readouterr().out


def test_unreachable_database_fails_with_clear_message(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OMR_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("OMR_DATA_DIR", str(tmp_path / "data"))

    assert main(["db", "status"]) == 1

    err = capsys.readouterr().err
    assert err.startswith(
        "error: Cannot connect to PostgreSQL at nobody@127.0.0.1:1/none"
    )
    assert "Traceback" not in err


def test_backup_and_restore_round_trip(
    use_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "omr.backup"
    with psycopg.connect(use_database, autocommit=True) as conn:
        conn.execute("INSERT INTO students (code, name) VALUES ('R1', 'Before')")

    assert main(["db", "backup", str(archive)]) == 0
    with psycopg.connect(use_database, autocommit=True) as conn:
        conn.execute("UPDATE students SET name = 'After' WHERE code = 'R1'")
        conn.execute("INSERT INTO students (code, name) VALUES ('R2', 'Later')")
    assert main(["db", "restore", "--yes", str(archive)]) == 0

    with psycopg.connect(use_database) as conn:
        rows = conn.execute("SELECT code, name FROM students ORDER BY code").fetchall()
    assert rows == [("R1", "Before")]


def test_restore_of_bad_file_changes_nothing(
    use_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "not-a-backup.dump"
    bogus.write_bytes(b"PGDMP but not really")
    with psycopg.connect(use_database, autocommit=True) as conn:
        conn.execute("INSERT INTO students (code, name) VALUES ('R1', 'Kept')")

    assert main(["db", "restore", "--yes", str(bogus)]) == 1

    assert "is not a backup made by 'omr-desktop db backup'" in capsys.readouterr().err
    with psycopg.connect(use_database) as conn:
        rows = conn.execute("SELECT code, name FROM students").fetchall()
    assert rows == [("R1", "Kept")]


def test_db_use_saves_and_clears_the_database_url(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from omr_desktop import config

    monkeypatch.delenv("OMR_DATABASE_URL", raising=False)
    monkeypatch.setenv("OMR_DATA_DIR", str(tmp_path / "data"))

    assert main(["db", "use", "postgresql://editor:pw@db.example:5433/omr"]) == 0
    assert config.database_choice().source == "settings"
    assert "pw@" not in capsys.readouterr().out
    assert main(["db", "use", "embedded"]) == 0
    assert config.database_choice().embedded


def test_entry_point_runs_db_status(use_database: str, tmp_path: Path) -> None:
    env = dict(
        os.environ, OMR_DATABASE_URL=use_database, OMR_DATA_DIR=str(tmp_path / "data")
    )
    script = Path(sys.executable).with_name("omr-desktop")

    done = subprocess.run(
        [str(script), "db", "status"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "Schema version" in done.stdout


def test_output_closed_early_gives_no_traceback(
    use_database: str, tmp_path: Path
) -> None:
    env = dict(
        os.environ, OMR_DATABASE_URL=use_database, OMR_DATA_DIR=str(tmp_path / "data")
    )
    script = Path(sys.executable).with_name("omr-desktop")
    # As `omr-desktop db status | head -1` does once head has its line.
    with subprocess.Popen(
        [str(script), "db", "status"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()
        errors = process.stderr.read().decode()
        returncode = process.wait(timeout=120)

    assert "Traceback" not in errors
    assert "BrokenPipe" not in errors
    assert returncode in (0, 1)


def test_demo_command_seeds_batch_once(
    use_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--sheets", "2", "--workers", "1"]) == 0
    assert "Batch 'Demo': 2 sheets, 300 answers" in capsys.readouterr().out

    assert main(["demo", "--if-missing"]) == 0
    assert "exists already; nothing to do" in capsys.readouterr().out
    assert main(["demo", "--sheets", "2"]) == 1
    assert "A batch named 'Demo' exists already" in capsys.readouterr().err


def test_import_command_reports_invalid_template(
    use_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "template.json"
    template.write_text('{"pageDimensions": [100, 100], "fieldBlocks": {}}')

    status = main(
        [
            "import",
            "--template",
            str(template),
            "--images",
            str(tmp_path),
            "--batch",
            "x",
        ]
    )

    assert status == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "Traceback" not in err
