"""The omr-desktop command as a user runs it: version, db status, migrate, backup."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from omr_desktop.cli import main

# Seconds to wait for the thread that reads the export from a pipe.
TIMEOUT_S = 60

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


def test_invalid_database_url_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("OMR_DATABASE_URL", "notaurl")

    status = main(["db", "status"])

    err = capsys.readouterr().err
    assert status == 1
    assert "OMR_DATABASE_URL 'notaurl' is not a PostgreSQL connection URL" in err
    assert "unset OMR_DATABASE_URL" in err
    assert "unexpected" not in err


def test_demo_command_seeds_batch_once(
    use_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--sheets", "2", "--workers", "1"]) == 0
    assert "Batch 'Demo': 2 sheets, 300 answers" in capsys.readouterr().out

    assert main(["demo", "--if-missing"]) == 0
    assert "exists already; nothing to do" in capsys.readouterr().out
    assert main(["demo", "--sheets", "2"]) == 1
    assert "A batch named 'Demo' exists already" in capsys.readouterr().err


def test_demo_blank_name_exits_2(
    use_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--batch", "  "])

    assert exited.value.code == 2
    assert "invalid batch name '  '" in capsys.readouterr().err


def test_demo_stopped_by_sigterm_removes_images(
    use_database: str, tmp_path: Path
) -> None:
    images = tmp_path / "data" / "demo" / "Demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "omr_desktop.cli", "demo", "--sheets", "2000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (images.is_dir() and any(images.iterdir())):
            assert demo.poll() is None, demo.communicate()[1]
            assert time.monotonic() < deadline, "no image was written"
            time.sleep(0.05)
        demo.send_signal(signal.SIGTERM)
        _, errors = demo.communicate(timeout=TIMEOUT_S)
    finally:
        demo.kill()

    assert demo.returncode == 1
    assert "Interrupted." in errors
    assert not images.exists()


def test_reprocess_stopped_by_sigterm_cancels(
    use_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--sheets", "200", "--workers", "2"]) == 0
    capsys.readouterr()
    with psycopg.connect(use_database) as conn:
        before = conn.execute("SELECT id, score FROM sheets ORDER BY id").fetchall()
    reprocess = subprocess.Popen(
        [sys.executable, "-m", "omr_desktop.cli", "reprocess", "--batch", "Demo"]
        + ["--profile", "3", "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reprocess.stderr is not None
        # The command names the task once it is submitted.
        line = reprocess.stderr.readline()
        while line and not line.startswith("Task "):
            line = reprocess.stderr.readline()
        reprocess.send_signal(signal.SIGTERM)
        _, errors = reprocess.communicate(timeout=TIMEOUT_S)
    finally:
        reprocess.kill()

    assert line.startswith("Task ")
    assert reprocess.returncode == 1
    assert "cancelled" in errors
    with psycopg.connect(use_database) as conn:
        after = conn.execute("SELECT id, score FROM sheets ORDER BY id").fetchall()
        status = conn.execute("SELECT status, error FROM reprocess_tasks").fetchall()
    assert after == before
    assert status == [("FAILURE", "cancelled")]


def test_reprocess_interrupted_too_late_says_so(
    use_database: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from omr_desktop.pipeline.task_manager import TaskManager

    assert main(["demo", "--sheets", "2", "--workers", "1"]) == 0
    real_wait = TaskManager.wait
    interrupts: list[str] = []

    def interrupted_after_the_end(
        self: TaskManager, task_id: str, timeout_s: float | None = None
    ) -> bool:
        # The interrupt lands once the task has passed its last sheet.
        if not interrupts:
            interrupts.append(task_id)
            real_wait(self, task_id)
            raise KeyboardInterrupt
        return real_wait(self, task_id, timeout_s)

    monkeypatch.setattr(TaskManager, "wait", interrupted_after_the_end)
    capsys.readouterr()

    status = main(["reprocess", "--batch", "Demo", "--profile", "2"])

    err = capsys.readouterr().err
    assert status == 0
    assert "the cancel came after the last sheet was read" in err
    assert f"--undo {interrupts[0]}" in err


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


@pytest.fixture
def one_sheet_batch(use_database: str, db: psycopg.Connection) -> int:
    """Add the batch 'Small' with one answer-less sheet and return the sheet id."""
    from tests.db.builders import add_batch, add_sheet, add_template

    batch_id = add_batch(db, "Small", add_template(db), None)
    return add_sheet(db, batch_id, 1, [])


def test_reprocess_of_sheets_another_process_holds_exits_1(
    one_sheet_batch: int, db_conninfo: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from omr_desktop.db.reprocess_store import mark_writing

    other_task = str(uuid.uuid4())
    with psycopg.connect(db_conninfo) as other:
        # The rows and locks of a reprocess that runs in another process.
        other.execute(
            "INSERT INTO reprocess_tasks (task_id, status, profile_id, sheet_ids,"
            " runner_host, runner_pid, started_at)"
            " VALUES (%s, 'STARTED', 2, %s, 'another-host', 1, now())",
            (other_task, [one_sheet_batch]),
        )
        other.commit()
        mark_writing(other, other_task)

        status = main(["reprocess", "--sheets", str(one_sheet_batch), "--profile", "2"])
        other.rollback()

    err = capsys.readouterr().err
    assert status == 1
    assert f"already in task {other_task}" in err


def test_export_to_folder_exits_2(
    one_sheet_batch: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "exports" / "2026"
    folder.mkdir(parents=True)

    status = main(["export", "--batch", "Small", "--out", str(folder)])

    err = capsys.readouterr().err
    assert status == 2
    assert f"The output path {folder} is a folder" in err
    assert str(folder / "export.csv") in err
    assert "Traceback" not in err
    assert list(folder.parent.iterdir()) == [folder]
    assert list(folder.iterdir()) == []


def test_export_write_failure_removes_partial_file(
    one_sheet_batch: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import errno

    from omr_desktop.db import export

    def write_then_fail(conn: object, writer: Any, ids: list[int]) -> int:
        writer.writerow(["sequence_no"])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "_write_sheets", write_then_fail)
    out = tmp_path / "exports" / "sheets.csv"
    out.parent.mkdir()

    status = main(["export", "--batch", "Small", "--out", str(out)])

    err = capsys.readouterr().err
    assert status == 1
    assert f"error: Cannot write {out}: No space left on device." in err
    assert list(out.parent.iterdir()) == []


def test_export_into_missing_folder_rejected(
    one_sheet_batch: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "no such folder" / "sheets.csv"

    status = main(["export", "--batch", "Small", "--out", str(out)])

    assert status == 2
    assert f"{out.parent} does not exist" in capsys.readouterr().err
    assert not out.parent.exists()


def test_export_path_with_trailing_slash_rejected(
    one_sheet_batch: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = f"{tmp_path / 'missing'}/"

    with pytest.raises(SystemExit) as exited:
        main(["export", "--batch", "Small", "--out", folder])

    assert exited.value.code == 2
    assert f"{folder!r} names a folder" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()


def test_export_below_a_file_rejected(
    one_sheet_batch: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")

    status = main(["export", "--batch", "Small", "--out", str(plain / "x.csv")])

    assert status == 2
    assert f"{plain} is not a folder" in capsys.readouterr().err


def test_export_interrupted_removes_partial_file(
    one_sheet_batch: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from omr_desktop.db import export

    def write_then_interrupt(conn: object, writer: Any, ids: list[int]) -> int:
        writer.writerow(["sequence_no"])
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_write_sheets", write_then_interrupt)
    out = tmp_path / "exports" / "sheets.csv"
    out.parent.mkdir()

    status = main(["export", "--batch", "Small", "--out", str(out)])

    assert status == 1
    assert "Interrupted." in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []


def test_export_outside_sheet_singular(
    one_sheet_batch: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sheets.csv"

    status = main(["export", "--batch", "Small", "--sheets", "999", "--out", str(out)])

    assert status == 2
    assert "error: Sheet 999 is not in this batch." in capsys.readouterr().err


def test_export_writes_one_row_in_singular(
    one_sheet_batch: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sheets.csv"

    assert main(["export", "--batch", "Small", "--out", str(out)]) == 0

    assert capsys.readouterr().out == f"Wrote 1 row to {out}.\n"
    assert len(out.read_text().splitlines()) == 2


def test_export_follows_link_to_file(
    one_sheet_batch: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "kept" / "sheets.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "latest.csv"
    link.symlink_to(target)

    assert main(["export", "--batch", "Small", "--out", str(link)]) == 0

    assert link.is_symlink()
    assert len(target.read_text().splitlines()) == 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["sheets.csv"]


def test_export_writes_into_pipe(
    one_sheet_batch: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A pipe stands for a device such as /dev/null: both are written into,
    # never replaced by a file.
    folder = tmp_path / "out"
    folder.mkdir()
    pipe = folder / "rows.fifo"
    os.mkfifo(pipe)
    received: list[str] = []
    reader = threading.Thread(
        target=lambda: received.append(pipe.read_text()), daemon=True
    )
    reader.start()

    status = main(["export", "--batch", "Small", "--out", str(pipe)])
    reader.join(TIMEOUT_S)

    assert status == 0
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    assert len(received[0].splitlines()) == 2
    assert list(folder.iterdir()) == [pipe]


def test_export_dash_writes_standard_output(
    one_sheet_batch: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--batch", "Small", "--out", "-"]) == 0

    out = capsys.readouterr()
    assert out.out.splitlines()[0].startswith("sequence_no,")
    assert len(out.out.splitlines()) == 2
    assert out.err == "Wrote 1 row to standard output.\n"
    assert not (Path.cwd() / "-").exists()


@pytest.mark.parametrize(
    ("task_id", "message"),
    [
        (
            "00000000-0000-0000-0000-000000000000",
            "error: Task 00000000-0000-0000-0000-000000000000 does not exist.",
        ),
        ("not-a-uuid", "error: 'not-a-uuid' is not a task id."),
        ("12", "error: '12' is not a task id."),
    ],
)
def test_undo_bad_task_exits_2(
    use_database: str,
    capsys: pytest.CaptureFixture[str],
    task_id: str,
    message: str,
) -> None:
    assert main(["reprocess", "--undo", task_id]) == 2

    assert capsys.readouterr().err.startswith(message)


def test_reprocess_empty_batch_message(
    use_database: str, db: psycopg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.db.builders import add_batch, add_template

    add_batch(db, "Empty", add_template(db), None)

    status = main(["reprocess", "--batch", "Empty", "--profile", "2"])

    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: the batch 'Empty' has no sheets")
    assert "give at least one sheet id" not in err
    assert db.execute("SELECT count(*) FROM reprocess_tasks").fetchone() == (0,)


def test_unknown_profile_lists_profiles(
    one_sheet_batch: int,
    db: psycopg.Connection,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db.execute(
        "INSERT INTO profiles (name, description) VALUES ('Pale ink', 'Faint scans.')"
    )

    status = main(["reprocess", "--batch", "Small", "--profile", "42"])

    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: Profile 42 does not exist. Choose one of: ")
    assert "1 Default, 2 Sensitive, 3 Strict, 100 Pale ink." in err
    assert "--help" not in err


def test_profiles_command_lists_every_profile(
    use_database: str, db: psycopg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    db.execute(
        "INSERT INTO profiles (name, description, settings) VALUES"
        " ('Blurred', 'Soft scans.', '{\"measurement\": {\"blur_ksize\": 3}}'),"
        " ('Broken', 'Bad settings.', '{\"nonsense\": 1}')"
    )

    assert main(["profiles"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "KIND", "MEASUREMENT", "DESCRIPTION"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(rows, key=int) == ["1", "2", "3", "100", "101"]
    assert rows["1"][1:3] == ["Default", "built-in"]
    assert rows["100"][1:3] == ["Blurred", "added"]
    assert rows["101"][3] == "invalid"
    # The built-ins measure alike. A profile with another blur measures differently.
    assert rows["1"][3] == rows["2"][3] == rows["3"][3]
    assert rows["100"][3] != rows["1"][3]


def test_reprocess_help_names_profiles_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["reprocess", "--help"])

    out = " ".join(capsys.readouterr().out.split())
    assert "'omr-desktop profiles' lists them" in out
    assert "1 Default, 2 Sensitive, 3 Strict" not in out


def test_export_prune_help_texts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    export_help = " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["db", "prune-history", "--help"])
    prune_help = " ".join(capsys.readouterr().out.split())

    assert "Write a batch to a CSV file" in export_help
    assert "--batch NAME name of the batch to export" in export_help
    assert "--out FILE.csv path of the CSV file to write" in export_help
    assert "Pruned tasks can no longer be undone" in prune_help
    assert "--keep N number of finished tasks, newest first" in prune_help


def test_sheet_ids_count_once_when_repeated() -> None:
    from omr_desktop.cli import build_parser

    args = build_parser().parse_args(["reprocess", "--sheets", "1,2,3,4,5,2"])

    assert args.sheets == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sheets", "-5"], "argument --sheets: '-5' is not a sheet id"),
        (["--sheets=-5"], "argument --sheets: '-5' is not a sheet id"),
        (["--sheets", "-5,6"], "argument --sheets: '-5' is not a sheet id"),
        (["--sheets", "7,-5"], "argument --sheets: '-5' is not a sheet id"),
        (["--sheets", "0"], "argument --sheets: '0' is not a sheet id"),
        (
            ["--sheets", "9" * 5000],
            "argument --sheets: sheet id 999999999999999999999999... "
            "(5,000 digits) is out of range",
        ),
        (
            ["--sheets", "9223372036854775808"],
            "sheet id 9223372036854775808 (19 digits) is out of range",
        ),
        (["--sheets", "1", "--profile", "-2"], "'-2' is not a profile id"),
        (["--sheets", "1", "--profile", "9" * 5000], "is not a profile id"),
    ],
    ids=[
        "negative",
        "negative joined",
        "negative list",
        "negative later",
        "zero",
        "5000 digits",
        "past bigint",
        "negative profile",
        "long profile",
    ],
)
def test_invalid_ids_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["reprocess", *argv])

    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert message in err
    assert "set_int_max_str_digits" not in err
    assert "expected one argument" not in err
