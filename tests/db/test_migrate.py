"""Schema migrations on a real PostgreSQL: from empty, again, and refusals."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import psycopg
import pytest

from omr_desktop.db.migrate import (
    MigrationError,
    SchemaNotMigratedError,
    SchemaTooNewError,
    available_migrations,
    check_schema,
    latest_version,
    migrate,
    schema_version,
)

pytestmark = pytest.mark.db


def migrations_before(version: int, tmp_path: Path) -> Path:
    """Return a folder with copies of the migrations older than ``version``."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for migration in available_migrations():
        if migration.version < version:
            shutil.copy(migration.path, folder / migration.path.name)
    return folder


def test_migrate_from_empty_applies_all(empty_db_conninfo: str) -> None:
    with psycopg.connect(empty_db_conninfo, autocommit=True) as conn:
        applied = migrate(conn)

        assert [m.version for m in applied] == [
            m.version for m in available_migrations()
        ]
        assert schema_version(conn) == latest_version()
        assert check_schema(conn) == latest_version()


def test_migrate_again_applies_nothing(db: psycopg.Connection) -> None:
    before = db.execute("SELECT version, applied_at FROM schema_migrations").fetchall()

    assert migrate(db) == []
    assert (
        db.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
        == before
    )


def test_migrate_seeds_builtin_profiles(db: psycopg.Connection) -> None:
    rows = db.execute("SELECT id, name FROM profiles ORDER BY id").fetchall()

    assert rows == [(1, "Default"), (2, "Sensitive"), (3, "Strict")]


def test_omr_answers_has_fillfactor_below_100(db: psycopg.Connection) -> None:
    row = db.execute(
        "SELECT reloptions FROM pg_class WHERE relname = 'omr_answers'"
    ).fetchone()

    assert row is not None
    assert "fillfactor=50" in row[0]


def test_sheet_fills_are_stored_uncompressed(db: psycopg.Connection) -> None:
    rows = db.execute(
        "SELECT attrelid::regclass::text, attstorage FROM pg_attribute"
        " WHERE attname = 'fills'"
        "   AND attrelid IN ('sheets'::regclass, 'sheet_history'::regclass)"
        " ORDER BY 1"
    ).fetchall()

    assert rows == [("sheet_history", "e"), ("sheets", "e")]


def test_fills_are_kept_per_sheet_only(db: psycopg.Connection) -> None:
    """Migration 0010 drops the answers' copy of their sheet's fills."""
    columns = db.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'omr_answers'::regclass"
        " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    ).fetchall()

    assert "fills" not in [c[0] for c in columns]
    assert "fills" in [
        c[0]
        for c in db.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'sheets'::regclass"
        ).fetchall()
    ]


def test_fresh_database_has_no_fills_archive(db: psycopg.Connection) -> None:
    row = db.execute("SELECT to_regclass('answer_fills_archive')").fetchone()

    assert row == (None,)


def test_answer_fills_kept_where_sheets_have_none(
    empty_db_conninfo: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Migration 0010 archives the fills only answers stored, and logs a count."""
    folder = migrations_before(10, tmp_path)
    with psycopg.connect(empty_db_conninfo, autocommit=True) as conn:
        migrate(conn, folder)
        # Sheet 1 stores its fills, sheet 2 none, sheet 3 none and its
        # answers none either.
        conn.execute(
            "INSERT INTO templates (id, name, layout) OVERRIDING SYSTEM VALUE"
            " VALUES (1, 't', '{}');"
            "INSERT INTO batches (id, name, template_id) OVERRIDING SYSTEM VALUE"
            " VALUES (1, 'b', 1);"
            "INSERT INTO sheets (id, batch_id, sequence_no, image_path, fills)"
            " OVERRIDING SYSTEM VALUE"
            " SELECT n, 1, n, 's' || n || '.jpg',"
            "  CASE WHEN n = 1 THEN '{0.9,0.1,0.1,0.9}'::real[] END"
            " FROM generate_series(1, 3) n;"
            "INSERT INTO omr_answers (sheet_id, question, position, answer_raw,"
            " answer_corrected, fills)"
            " SELECT s, 'q' || q, q, 'A', 'A',"
            "  CASE WHEN s = 3 THEN '{}' ELSE ARRAY[0.9, q / 10.0]::real[] END"
            " FROM generate_series(1, 3) s, generate_series(1, 2) q"
        )

        with caplog.at_level("WARNING", logger="omr_desktop.db.migrate"):
            migrate(conn)

        archived = conn.execute(
            "SELECT sheet_id, question, fills FROM answer_fills_archive ORDER BY 1, 2"
        ).fetchall()
        answers = conn.execute("SELECT count(*) FROM omr_answers").fetchone()
    assert archived == [
        (2, "q1", [pytest.approx(0.9), pytest.approx(0.1)]),
        (2, "q2", [pytest.approx(0.9), pytest.approx(0.2)]),
    ]
    assert answers == (6,)
    assert "Kept the fills of 2 answers" in caplog.text


def test_newer_database_is_rejected(db: psycopg.Connection) -> None:
    db.execute(
        "INSERT INTO schema_migrations (version, name, checksum)"
        " VALUES (9999, 'from_the_future', 'x')"
    )

    with pytest.raises(SchemaTooNewError, match="version 9999.*newer OMR Desktop"):
        migrate(db)
    with pytest.raises(SchemaTooNewError):
        check_schema(db)


def test_edited_migration_is_detected(db: psycopg.Connection) -> None:
    db.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")

    with pytest.raises(MigrationError, match="0001_schema.sql was changed"):
        migrate(db)


def test_pending_migration_is_reported(empty_db_conninfo: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    first = available_migrations()[0]
    shutil.copy(first.path, folder / first.path.name)
    with psycopg.connect(empty_db_conninfo, autocommit=True) as conn:
        migrate(conn, folder)

        with pytest.raises(SchemaNotMigratedError, match="omr-desktop db migrate"):
            check_schema(conn)


def test_failed_migration_leaves_no_trace(
    empty_db_conninfo: str, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_good.sql").write_text("CREATE TABLE good (id int);")
    (folder / "0002_bad.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT 1/0;"
    )
    with psycopg.connect(empty_db_conninfo, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            migrate(conn, folder)

        assert schema_version(conn) == 1
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)


def test_bad_migration_file_name_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "1_missing_digits.sql").write_text("SELECT 1;")

    with pytest.raises(MigrationError, match="1_missing_digits.sql"):
        available_migrations(tmp_path)


def test_concurrent_migrations_apply_each_once(empty_db_conninfo: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(empty_db_conninfo, autocommit=True) as conn:
                migrate(conn)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    with psycopg.connect(empty_db_conninfo) as conn:
        rows = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert rows == (len(available_migrations()),)


def test_history_rows_survive_the_move_to_one_row_per_sheet(
    empty_db_conninfo: str, tmp_path: Path
) -> None:
    """Migration 0007 keeps every old answer history row and every answer."""
    folder = migrations_before(7, tmp_path)
    history_rows = (
        "SELECT task_id, sheet_id, question, answer_raw, answer_corrected,"
        " confidence_score, fills, reason, needs_review, corrected_by,"
        " corrected_at, recorded_at, inserted FROM answer_history"
        " ORDER BY task_id, sheet_id, question"
    )
    # Every column but the fills, which migration 0010 leaves to the sheets.
    answer_rows = (
        "SELECT sheet_id, question, position, answer_raw, answer_corrected,"
        " confidence_score, reason, needs_review, corrected_by, corrected_at"
        " FROM omr_answers ORDER BY sheet_id, question"
    )
    with psycopg.connect(empty_db_conninfo, autocommit=True) as conn:
        migrate(conn, folder)
        conn.execute(
            "INSERT INTO templates (id, name, layout) OVERRIDING SYSTEM VALUE"
            " VALUES (1, 't', '{}');"
            "INSERT INTO batches (id, name, template_id) OVERRIDING SYSTEM VALUE"
            " VALUES (1, 'b', 1);"
            "INSERT INTO sheets (id, batch_id, sequence_no, image_path)"
            " OVERRIDING SYSTEM VALUE"
            " SELECT n, 1, n, 's' || n || '.jpg' FROM generate_series(1, 3) n;"
            "INSERT INTO omr_answers (sheet_id, question, position, answer_raw,"
            " answer_corrected, fills)"
            " SELECT s, 'q' || q, q, 'A', 'A', '{0.9,0.1}'"
            " FROM generate_series(1, 3) s, generate_series(1, 4) q;"
            "INSERT INTO reprocess_tasks (task_id, profile_id, sheet_ids, status)"
            " VALUES ('00000000-0000-0000-0000-000000000001', 1, '{1,2,3}', 'SUCCESS'),"
            "        ('00000000-0000-0000-0000-000000000002', 1, '{1}', 'SUCCESS')"
        )
        conn.execute(
            "INSERT INTO answer_history (task_id, sheet_id, question, answer_raw,"
            " answer_corrected, confidence_score, fills, reason, needs_review,"
            " corrected_by, corrected_at, inserted)"
            " SELECT ('00000000-0000-0000-0000-00000000000' || t)::uuid, s,"
            "  'q' || q, CASE WHEN q = 1 THEN E'a\\tb\\\\c' ELSE 'B' END, '',"
            "  q / 10.0, ARRAY[q, 0.25]::real[], 'light_mark', q = 2,"
            "  CASE WHEN q = 3 THEN 'editor, \"night\"' END,"
            "  CASE WHEN q = 3 THEN now() END, q = 4"
            " FROM generate_series(1, 2) t, generate_series(1, 3) s,"
            "  generate_series(1, 4) q WHERE t = 1 OR s = 1"
        )
        before = conn.execute(history_rows).fetchall()
        answers_before = conn.execute(answer_rows).fetchall()

        migrate(conn)

        assert conn.execute(history_rows).fetchall() == before
        assert len(before) == 16
        assert conn.execute(answer_rows).fetchall() == answers_before
        per_sheet = conn.execute("SELECT count(*) FROM answer_history_sheets")
        assert per_sheet.fetchone() == (4,)


def test_fills_digest_migration_and_trigger(
    empty_db_conninfo: str, tmp_path: Path
) -> None:
    """Migration 0011 digests the stored fills, and its trigger keeps them true."""
    digest_ok = (
        "SELECT id, fills_digest IS NOT DISTINCT FROM sha256(array_send(fills))"
        " FROM sheets ORDER BY id"
    )
    with psycopg.connect(empty_db_conninfo, autocommit=True) as conn:
        migrate(conn, migrations_before(11, tmp_path))
        conn.execute(
            "INSERT INTO templates (id, name, layout) OVERRIDING SYSTEM VALUE"
            " VALUES (1, 't', '{}');"
            "INSERT INTO batches (id, name, template_id) OVERRIDING SYSTEM VALUE"
            " VALUES (1, 'b', 1);"
            "INSERT INTO sheets (id, batch_id, sequence_no, image_path, fills)"
            " OVERRIDING SYSTEM VALUE"
            " VALUES (1, 1, 1, 's1.jpg', '{0.9,0.1}'), (2, 1, 2, 's2.jpg', NULL)"
        )

        migrate(conn)

        assert conn.execute(digest_ok).fetchall() == [(1, True), (2, True)]
        digests = conn.execute("SELECT id, fills_digest FROM sheets ORDER BY id")
        assert [d is None for _, d in digests] == [False, True]

        # New rows, and fills changed without a new digest, get theirs here.
        conn.execute(
            "INSERT INTO sheets (id, batch_id, sequence_no, image_path, fills,"
            " fills_digest) OVERRIDING SYSTEM VALUE"
            " VALUES (3, 1, 3, 's3.jpg', '{0.5}', 'not a digest')"
        )
        conn.execute("UPDATE sheets SET fills = '{0.2,0.3}' WHERE id IN (1, 2)")
        assert conn.execute(digest_ok).fetchall() == [(1, True), (2, True), (3, True)]

        # A writer that sets both is trusted, as the reprocess does.
        conn.execute(
            "UPDATE sheets SET fills = '{0.7}', fills_digest = 'given' WHERE id = 1"
        )
        stored = conn.execute("SELECT fills_digest FROM sheets WHERE id = 1")
        assert stored.fetchone() == (b"given",)
