"""REPROCESS_SHEET_SURGICAL on hand-made sheets with known scores and flags."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.db.builders import (
    AnswerRow,
    add_batch,
    add_key,
    add_sheet,
    add_template,
    sheet_flags,
    sheet_score,
    snapshot_other_sheets,
)

pytestmark = pytest.mark.db

MIGRATIONS = Path(__file__).resolve().parents[2] / "omr_desktop" / "db" / "migrations"

A = AnswerRow

# Key: q1 accepts B; q2 accepts B or C; q3 accepts only the double mark BC;
# q4 accepts A with its own points. Negative marking: +4 / -1 / 0, and
# q4 scores +2 / 0 / 0.
KEY = {"q1": ["B"], "q2": ["B", "C"], "q3": ["BC"], "q4": ["A"]}
Q4_POINTS = {"q4": (2.0, 0.0, 0.0)}

MULTI_UNRESOLVED = {"corrected": "*", "reason": "multi_mark", "needs_review": True}

# (case name, answers, expected score, expected flags)
CASES = [
    (
        "all right, q3 as an unresolved BC multi-mark the key accepts",
        [A("q1", "B"), A("q2", "C"), A("q3", "BC", **MULTI_UNRESOLVED), A("q4", "A")],
        14.0,
        {"MULTI_MARK": 1, "NEEDS_REVIEW": 1},
    ),
    (
        "all wrong, negative marking",
        [A("q1", "A"), A("q2", "D"), A("q3", "B"), A("q4", "C")],
        -3.0,
        {},
    ),
    (
        "all blank",
        [A(q, "", reason="blank") for q in ("q1", "q2", "q3", "q4")],
        0.0,
        {"BLANK_ANSWER": 4, "BLANK_SHEET": 1},
    ),
    (
        "multi-marks: one resolved to the darkest, one unresolved, q4 missing",
        [
            A("q1", "AB", corrected="B", reason="multi_mark"),
            A("q2", "BC", **MULTI_UNRESOLVED),
            A("q3", "C"),
        ],
        4.0 - 1.0 - 1.0 + 0.0,
        {"MULTI_MARK": 2, "NEEDS_REVIEW": 1},
    ),
    (
        "manual corrections count and clear the review",
        [
            A("q1", "", corrected="B", reason="blank", corrected_by="editor"),
            A(
                "q2",
                "B",
                corrected="C",
                confidence=0.2,
                reason="near_threshold",
                needs_review=True,
                corrected_by="editor",
            ),
            A("q3", "B", confidence=0.1, reason="near_threshold", needs_review=True),
            A("q4", "A"),
        ],
        4.0 + 4.0 - 1.0 + 2.0,
        {"LOW_CONFIDENCE": 2, "NEEDS_REVIEW": 1},
    ),
    (
        "erased mark reads blank",
        [
            A("q1", "", reason="erased"),
            A("q2", "B"),
            A("q3", "BC", **MULTI_UNRESOLVED),
            A("q4", "A"),
        ],
        0.0 + 4.0 + 4.0 + 2.0,
        {"ERASED_MARK": 1, "BLANK_ANSWER": 1, "MULTI_MARK": 1, "NEEDS_REVIEW": 1},
    ),
    (
        "answers to questions outside the key do not count",
        [A("q1", "B"), A("q99", "B"), A("q100", "", reason="blank")],
        4.0,
        {"BLANK_ANSWER": 1},
    ),
    (
        "sheet with no answers scores the blanks of every key question",
        [],
        0.0,
        {},
    ),
]


@pytest.fixture
def keyed_batch(db: psycopg.Connection) -> int:
    template_id = add_template(db)
    key_id = add_key(db, "key", KEY, correct=4, wrong=-1, blank=0, overrides=Q4_POINTS)
    return add_batch(db, "keyed", template_id, key_id)


def rescore(conn: psycopg.Connection, sheet_ids: list[int]) -> int:
    row = conn.execute(
        "CALL REPROCESS_SHEET_SURGICAL(%s::bigint[], NULL)", (sheet_ids,)
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(
    ("answers", "expected_score", "expected_flags"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_procedure_scores_and_flags_case(
    db: psycopg.Connection,
    keyed_batch: int,
    answers: list[AnswerRow],
    expected_score: float,
    expected_flags: dict[str, int],
) -> None:
    sheet_id = add_sheet(db, keyed_batch, 1, answers)

    assert rescore(db, [sheet_id]) == 1

    assert sheet_score(db, sheet_id) == pytest.approx(expected_score)
    assert sheet_flags(db, sheet_id) == expected_flags


def test_procedure_sheet_without_key_gets_null_score(db: psycopg.Connection) -> None:
    batch_id = add_batch(db, "unkeyed", add_template(db), None)
    sheet_id = add_sheet(db, batch_id, 1, [A("q1", "AB", **MULTI_UNRESOLVED)])
    db.execute("UPDATE sheets SET score = 5 WHERE id = %s", (sheet_id,))

    rescore(db, [sheet_id])

    assert sheet_score(db, sheet_id) is None
    assert sheet_flags(db, sheet_id) == {"MULTI_MARK": 1, "NEEDS_REVIEW": 1}


def test_procedure_leaves_other_sheets_identical(
    db: psycopg.Connection, keyed_batch: int
) -> None:
    targets = [
        add_sheet(db, keyed_batch, n, case[1]) for n, case in enumerate(CASES, 1)
    ]
    others = [
        add_sheet(db, keyed_batch, 100 + n, [A("q1", "", reason="blank")])
        for n in range(3)
    ]
    # Stale values the procedure would change if it touched these sheets.
    db.execute("UPDATE sheets SET score = 77 WHERE id = ANY(%s)", (others,))
    db.execute(
        "INSERT INTO sheet_flags (sheet_id, flag, count)"
        " SELECT id, 'MULTI_MARK', 9 FROM sheets WHERE id = ANY(%s)",
        (others,),
    )
    before = snapshot_other_sheets(db, targets)

    rescore(db, targets)

    assert snapshot_other_sheets(db, targets) == before


def test_procedure_twice_gives_same_result(
    db: psycopg.Connection, keyed_batch: int
) -> None:
    sheet_ids = [
        add_sheet(db, keyed_batch, n, case[1]) for n, case in enumerate(CASES, 1)
    ]
    rescore(db, sheet_ids)
    first = [(sheet_score(db, s), sheet_flags(db, s)) for s in sheet_ids]

    rescore(db, sheet_ids)

    assert [(sheet_score(db, s), sheet_flags(db, s)) for s in sheet_ids] == first


def test_procedure_ignores_unknown_ids(
    db: psycopg.Connection, keyed_batch: int
) -> None:
    sheet_id = add_sheet(db, keyed_batch, 1, [A("q1", "B")])

    assert rescore(db, [sheet_id, 987654321, -5]) == 1
    assert rescore(db, [987654321]) == 0
    assert rescore(db, []) == 0
    assert sheet_score(db, sheet_id) == pytest.approx(4.0)


def test_procedure_replaces_stale_flags(
    db: psycopg.Connection, keyed_batch: int
) -> None:
    sheet_id = add_sheet(db, keyed_batch, 1, [A("q1", "AB", **MULTI_UNRESOLVED)])
    rescore(db, [sheet_id])
    db.execute(
        "UPDATE omr_answers SET answer_raw = 'B', answer_corrected = 'B',"
        " reason = 'clear', needs_review = false WHERE sheet_id = %s",
        (sheet_id,),
    )

    rescore(db, [sheet_id])

    assert sheet_flags(db, sheet_id) == {}
    assert sheet_score(db, sheet_id) == pytest.approx(4.0 + 0 + 0 + 0)


@pytest.mark.parametrize(
    "statement",
    [
        "CALL REPROCESS_SHEET_SURGICAL(%s::bigint[])",
        "CALL reprocess_sheet_surgical(%s::bigint[])",
        "CALL reprocess_sheet_surgical(sheet_ids => %s::bigint[])",
    ],
)
def test_procedure_resolves_under_both_spellings(
    db: psycopg.Connection, keyed_batch: int, statement: str
) -> None:
    sheet_id = add_sheet(db, keyed_batch, 1, [A("q1", "B")])

    row = db.execute(statement, ([sheet_id],)).fetchone()

    assert row == (1,)


def add_random_sheets(db: psycopg.Connection, keyed_batch: int) -> list[int]:
    """Add 60 sheets of random answers to the batch and one to a batch without key."""
    rng = random.Random(6)
    reasons = ["clear", "light_mark", "multi_mark", "near_threshold", "erased", "blank"]
    sheet_ids = []
    for n in range(60):
        answers = []
        for q in rng.sample(["q1", "q2", "q3", "q4", "q5", "q99"], rng.randint(0, 6)):
            raw = rng.choice(["", "A", "B", "C", "BC", "AB"])
            answers.append(
                A(
                    q,
                    raw,
                    corrected=rng.choice([None, None, "*", "B", ""]),
                    reason=rng.choice(reasons),
                    needs_review=rng.random() < 0.3,
                    corrected_by=rng.choice([None, None, "editor"]),
                )
            )
        sheet_ids.append(add_sheet(db, keyed_batch, n + 1, answers))
    unkeyed = add_batch(db, "no key", add_template(db, "t2"), None)
    sheet_ids.append(add_sheet(db, unkeyed, 1, [A("q1", "B")]))
    return sheet_ids


def add_procedure_version(db: psycopg.Connection, migration: str, name: str) -> None:
    """Create the procedure as ``migration`` defined it, under ``name``."""
    text = (MIGRATIONS / migration).read_text()
    for create in ("CREATE PROCEDURE", "CREATE OR REPLACE PROCEDURE"):
        text = text.replace(f"{create} reprocess_sheet_surgical(", f"{create} {name}(")
    db.execute(text)


def outcome(
    db: psycopg.Connection, sheet_ids: list[int]
) -> tuple[list[Any], list[Any]]:
    """Return the sheets' scores and flags, and clear them."""
    scores = db.execute(
        "SELECT id, score FROM sheets WHERE id = ANY(%s) ORDER BY id", (sheet_ids,)
    ).fetchall()
    flags = db.execute(
        "SELECT sheet_id, flag, count FROM sheet_flags"
        " WHERE sheet_id = ANY(%s) ORDER BY 1, 2",
        (sheet_ids,),
    ).fetchall()
    db.execute("UPDATE sheets SET score = NULL WHERE id = ANY(%s)", (sheet_ids,))
    db.execute("DELETE FROM sheet_flags WHERE sheet_id = ANY(%s)", (sheet_ids,))
    return scores, flags


def test_one_pass_procedure_matches_two_pass_version(
    db: psycopg.Connection, keyed_batch: int
) -> None:
    """The one-pass version (migration 0006) scores and flags as 0002 did."""
    sheet_ids = add_random_sheets(db, keyed_batch)
    add_procedure_version(db, "0002_reprocess_sheet_surgical.sql", "two_pass_surgical")

    db.execute("CALL two_pass_surgical(%s::bigint[], NULL)", (sheet_ids,))
    expected = outcome(db, sheet_ids)
    add_procedure_version(db, "0006_one_pass_rescore.sql", "one_pass_surgical")
    db.execute("CALL one_pass_surgical(%s::bigint[], NULL)", (sheet_ids,))

    assert outcome(db, sheet_ids) == expected
    assert any(score is not None for _id, score in expected[0])
    assert expected[1]


@pytest.mark.parametrize("analysed", [False, True])
def test_totals_table_matches_one_pass_version(
    db: psycopg.Connection, keyed_batch: int, analysed: bool
) -> None:
    """The current version scores and flags as 0006 did, on either plan.

    Once ``sheets`` is analysed, its statistics count the 61 sheets, so
    rescoring all of them takes the parallel plan.
    """
    sheet_ids = add_random_sheets(db, keyed_batch)
    if analysed:
        db.execute("ANALYZE sheets")
    add_procedure_version(db, "0006_one_pass_rescore.sql", "one_pass_surgical")
    db.execute("CALL one_pass_surgical(%s::bigint[], NULL)", (sheet_ids,))
    expected = outcome(db, sheet_ids)
    settings = "SELECT current_setting('enable_indexscan')"

    with db.transaction():
        # Twice in one transaction: the second call replaces the first one's
        # temporary table.
        assert rescore(db, sheet_ids) == len(sheet_ids)
        assert rescore(db, sheet_ids) == len(sheet_ids)
        assert db.execute(settings).fetchone() == ("on",)

    assert outcome(db, sheet_ids) == expected
    assert any(score is not None for _id, score in expected[0])
    assert expected[1]


def test_role_without_temp_still_rescores(
    db: psycopg.Connection, keyed_batch: int
) -> None:
    """Without TEMP the procedure keeps the totals in the statement."""
    sheet_ids = add_random_sheets(db, keyed_batch)
    db.execute("ANALYZE sheets")
    add_procedure_version(db, "0006_one_pass_rescore.sql", "one_pass_surgical")
    db.execute("CALL one_pass_surgical(%s::bigint[], NULL)", (sheet_ids,))
    expected = outcome(db, sheet_ids)
    role = sql.Identifier(f"omr_no_temp_{uuid.uuid4().hex[:12]}")
    database = sql.Identifier(db.info.dbname)

    with db.transaction(force_rollback=True):
        db.execute(sql.SQL("CREATE ROLE {}").format(role))
        db.execute(
            sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(database)
        )
        db.execute(
            sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(role)
        )
        db.execute(sql.SQL("SET LOCAL ROLE {}").format(role))
        temporary = "SELECT has_database_privilege(current_database(), 'TEMPORARY')"
        assert db.execute(temporary).fetchone() == (False,)

        assert rescore(db, sheet_ids) == len(sheet_ids)
        assert rescore(db, sheet_ids[:1]) == 1
        got = outcome(db, sheet_ids)

    assert got == expected
