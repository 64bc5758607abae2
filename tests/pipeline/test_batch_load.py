"""Seeding the demo batch and importing real scans into a real PostgreSQL."""

from __future__ import annotations

import errno
import shutil
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from omr_desktop.db.batch_store import BatchExistsError
from omr_desktop.pipeline import demo
from omr_desktop.pipeline.batch_load import SheetJob
from omr_desktop.pipeline.demo import DemoImagesError, seed_demo
from omr_desktop.pipeline.importer import ImportInputError, import_batch

pytestmark = pytest.mark.db

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def count(conn: psycopg.Connection, query: str, *params: object) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def test_demo_stores_sheets_students_key_and_scores(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    result = seed_demo(db, tmp_path, sheets=6, batch_name="Tiny demo", workers=2)

    assert result.sheets == 6
    assert result.answers == 6 * 150
    assert result.failed == ()
    assert count(db, "SELECT count(*) FROM sheets WHERE score IS NULL") == 0
    assert count(db, "SELECT count(DISTINCT student_id) FROM sheets") == 6
    assert count(db, "SELECT count(*) FROM answer_key_items") == 150
    assert count(db, "SELECT count(*) FROM batches WHERE status = 'ready'") == 1
    assert len(list((tmp_path / "demo" / "Tiny-demo").glob("*.jpg"))) == 6


def test_demo_has_light_marks_that_default_leaves_blank(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    seed_demo(db, tmp_path, sheets=4, workers=2)

    light = count(
        db,
        "SELECT count(*) FROM omr_answers WHERE reason = 'light_mark'"
        " AND answer_raw = ''",
    )
    share = light / (4 * 150)
    assert 0.05 <= share <= 0.15


def test_demo_is_reproducible_from_seed(db: psycopg.Connection, tmp_path: Path) -> None:
    seed_demo(db, tmp_path / "a", sheets=2, batch_name="A", seed=7, workers=2)
    seed_demo(db, tmp_path / "b", sheets=2, batch_name="B", seed=7, workers=1)

    rows = db.execute(
        "SELECT b.name, s.sequence_no,"
        " string_agg(a.answer_raw, ',' ORDER BY a.position)"
        " FROM omr_answers a JOIN sheets s ON s.id = a.sheet_id"
        " JOIN batches b ON b.id = s.batch_id GROUP BY 1, 2 ORDER BY 2, 1"
    ).fetchall()
    assert rows[0][2] == rows[1][2]
    assert rows[2][2] == rows[3][2]


def test_failed_demo_leaves_no_rows_and_no_images(
    db: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = demo._SheetRenderer.__call__

    def fail_on_third(self: demo._SheetRenderer, job: SheetJob):  # type: ignore[no-untyped-def]
        if job.sequence_no == 3:
            raise RuntimeError("disk full")
        return original(self, job)

    monkeypatch.setattr(demo._SheetRenderer, "__call__", fail_on_third)

    with pytest.raises(RuntimeError, match="disk full"):
        seed_demo(db, tmp_path, sheets=4, workers=1)

    for table in ("batches", "sheets", "omr_answers", "answer_keys", "students"):
        assert count(db, f"SELECT count(*) FROM {table}") == 0, table
    assert not (tmp_path / "demo" / "Demo").exists()


def image_paths(db: psycopg.Connection, batch_name: str) -> list[Path]:
    rows = db.execute(
        "SELECT s.image_path FROM sheets s JOIN batches b ON b.id = s.batch_id"
        " WHERE b.name = %s ORDER BY s.sequence_no",
        (batch_name,),
    ).fetchall()
    return [Path(r[0]) for r in rows]


def test_demo_rejects_existing_batch_name(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    seed_demo(db, tmp_path, sheets=2, workers=1)
    images = image_paths(db, "Demo")

    with pytest.raises(BatchExistsError, match="'Demo' exists already"):
        seed_demo(db, tmp_path, sheets=1, workers=1)

    # The first batch keeps its images, and the second leaves no folder.
    assert all(path.is_file() for path in images)
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["Demo"]


def test_demo_name_of_existing_key_is_named(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    # What a demo of the same name, started at the same time, leaves first.
    db.execute(
        "INSERT INTO answer_keys (name, points_correct, points_wrong, points_blank)"
        " VALUES ('Race key', 1, 0, 0)"
    )
    db.commit()

    with pytest.raises(BatchExistsError, match="answer key named 'Race key' exists"):
        seed_demo(db, tmp_path, sheets=1, batch_name="Race", workers=1)

    assert count(db, "SELECT count(*) FROM batches") == 0
    assert list((tmp_path / "demo").iterdir()) == []


def test_demo_long_name_gets_short_folder(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    name = "Ł" * 300

    seed_demo(db, tmp_path, sheets=1, batch_name=name, workers=1)

    (folder,) = {p.parent for p in image_paths(db, name)}
    assert len(folder.name.encode()) <= 100
    assert folder.name == "Ł" * 50


def test_demo_write_failure_is_named(
    db: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: demo._SheetRenderer, job: SheetJob) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(demo._SheetRenderer, "__call__", disk_full)

    with pytest.raises(DemoImagesError, match="No space left on device. Free some"):
        seed_demo(db, tmp_path, sheets=2, workers=1)

    assert count(db, "SELECT count(*) FROM batches") == 0
    assert list((tmp_path / "demo").iterdir()) == []


def test_demo_names_sharing_folder_keep_images(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    # Both names become the folder name "X-1".
    seed_demo(db, tmp_path, sheets=3, batch_name="X 1", workers=1)
    seed_demo(db, tmp_path, sheets=2, batch_name="X-1", workers=1)

    first = image_paths(db, "X 1")
    second = image_paths(db, "X-1")
    assert {p.parent.name for p in first} == {"X-1"}
    assert {p.parent.name for p in second} == {"X-1-2"}
    assert all(path.is_file() for path in first + second)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_import_reads_real_scan_and_scores_with_key(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    sample = SAMPLES / "Shamanth"
    key = write(tmp_path / "key.csv", 'q21,A\nQ22,"B,C"\nq23,D\n')

    result = import_batch(
        db,
        sample / "template.json",
        sample,
        "Shamanth",
        key_path=key,
        points=(Decimal(4), Decimal(-1), Decimal(0)),
    )

    assert result.sheets == 1
    answers = dict(
        db.execute(
            "SELECT question, answer_raw FROM omr_answers ORDER BY position"
        ).fetchall()
    )
    assert answers == {
        "q21": "A",
        "q22": "B",
        "q23": "C",
        "q24": "D",
        "q25": "A",
        "q26": "C",
        "q27": "C",
        "q28": "D",
    }
    # q21 right (+4), q22 B accepted (+4), q23 C against D (-1).
    assert count(db, "SELECT score FROM sheets") == 7
    assert db.execute(
        "SELECT st.code FROM sheets s JOIN students st ON st.id = s.student_id"
    ).fetchone() == ("omr_sheet_01",)


def test_import_keeps_going_past_a_corrupt_image(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    sample = SAMPLES / "Sandeep-1507"
    images = tmp_path / "scans"
    images.mkdir()
    for name in ("omr-1.png", "omr-2.png"):
        shutil.copy(sample / name, images / name)
    (images / "omr-3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    result = import_batch(db, sample / "template.json", images, "Sandeep")

    assert result.sheets == 3
    assert [f[0] for f in result.failed] == [3]
    assert count(db, "SELECT count(*) FROM sheets WHERE status = 'processed'") == 2
    row = db.execute(
        "SELECT status, error FROM sheets WHERE sequence_no = 3"
    ).fetchone()
    assert row is not None
    assert row[0] == "failed"
    assert "omr-3.png" in row[1]


@pytest.mark.parametrize(
    ("key_text", "message"),
    [
        ("q21\n", "line 1: expected 'question,answer'"),
        ("q21,A\nq99,B\n", "line 2: 'q99' is not a question"),
        ("q21,\"[['A', '1']]\"\n", "weighted answers"),
        ("q21, \n", "line 1: the answer is empty"),
    ],
)
def test_import_rejects_invalid_key_and_changes_nothing(
    db: psycopg.Connection, tmp_path: Path, key_text: str, message: str
) -> None:
    sample = SAMPLES / "Shamanth"
    key = write(tmp_path / "key.csv", key_text)

    with pytest.raises(ImportInputError, match=message):
        import_batch(db, sample / "template.json", sample, "Bad key", key_path=key)

    assert count(db, "SELECT count(*) FROM batches") == 0


def test_import_rejects_folder_without_images(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("no scans here")

    with pytest.raises(ImportInputError, match="holds no sheet images"):
        import_batch(db, SAMPLES / "Shamanth" / "template.json", tmp_path, "Empty")
