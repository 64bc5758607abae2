"""Decisions from fills alone: marks, confidence, reasons, re-deciding."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omr_desktop.engine import answer_plan as answer_plan_module
from omr_desktop.engine.answer_plan import answer_plan, spell_marks
from omr_desktop.engine.decide import REASONS, Answer, decide
from omr_desktop.engine.profile import (
    BUILTIN_PROFILES,
    DecisionSettings,
    ProfileSettings,
    parse_profile_settings,
)
from omr_desktop.engine.reader import MeasurementMismatchError, read_sheet, redecide
from omr_desktop.engine.synthetic import random_truth, render_sheet
from omr_desktop.engine.template import Template, load_template

# The module, which the package's `decide` function hides.
decide_module = importlib.import_module("omr_desktop.engine.decide")

DEFAULT = BUILTIN_PROFILES[1].settings.decision
SENSITIVE = BUILTIN_PROFILES[2].settings.decision


def _grid_template(fields: int = 4, options: int = 4) -> Template:
    data: dict[str, Any] = {
        "pageDimensions": [400, 60 + 40 * fields],
        "bubbleDimensions": [20, 20],
        "fieldBlocks": {
            "Block": {
                "bubbleValues": [chr(65 + i) for i in range(options)],
                "direction": "horizontal",
                "origin": [40, 30],
                "fieldLabels": [f"q1..{fields}"],
                "bubblesGap": 30,
                "labelsGap": 40,
            }
        },
    }
    return load_template(data)


def _fills(rows: list[list[float]]) -> np.ndarray:
    return np.array([v for row in rows for v in row], dtype=np.float32)


def test_one_clear_mark() -> None:
    reading = decide(_fills([[0.02, 0.9, 0.03, 0.02]] * 4), _grid_template(), DEFAULT)
    answer = reading.answers[0]
    assert (answer.answer_raw, answer.answer_corrected) == ("B", "B")
    assert answer.reason == "clear"
    assert answer.confidence_score == 1.0
    assert not answer.needs_review
    assert answer.fills == pytest.approx((0.02, 0.9, 0.03, 0.02))


def test_blank_question_reads_blank_not_all_marked() -> None:
    # Uneven blanks (printed letters) must not turn into "ABCD".
    rows = [[0.02, 0.9, 0.03, 0.02]] * 3 + [[0.06, 0.01, 0.12, 0.04]]
    answer = decide(_fills(rows), _grid_template(), DEFAULT).answers[3]
    assert answer.answer_raw == ""
    assert answer.answer_corrected == ""
    assert answer.reason in ("blank", "erased")


def test_two_solid_marks_are_unresolved_multi_mark() -> None:
    rows = [[0.9, 0.02, 0.88, 0.02]] + [[0.02, 0.9, 0.03, 0.02]] * 3
    answer = decide(_fills(rows), _grid_template(), DEFAULT).answers[0]
    assert answer.answer_raw == "AC"
    assert answer.answer_corrected == "*"
    assert answer.reason == "multi_mark"
    assert answer.needs_review


def test_clearly_darker_mark_wins_multi_mark() -> None:
    rows = [[0.95, 0.02, 0.5, 0.02]] + [[0.02, 0.9, 0.03, 0.02]] * 3
    answer = decide(_fills(rows), _grid_template(), DEFAULT).answers[0]
    assert answer.answer_raw == "AC"
    assert answer.answer_corrected == "A"
    assert answer.reason == "multi_mark"


@pytest.mark.parametrize(("policy", "corrected"), [("star", "*"), ("all", "AC")])
def test_multi_mark_policy(policy: str, corrected: str) -> None:
    rows = [[0.95, 0.02, 0.5, 0.02]] + [[0.02, 0.9, 0.03, 0.02]] * 3
    settings = dataclasses.replace(DEFAULT, multi_mark_policy=policy)  # type: ignore[arg-type]
    answer = decide(_fills(rows), _grid_template(), settings).answers[0]
    assert answer.answer_corrected == corrected


def test_light_mark_blank_under_default_read_by_sensitive() -> None:
    rows = [[0.02, 0.32, 0.03, 0.02]] + [[0.02, 0.9, 0.03, 0.02]] * 3
    default = decide(_fills(rows), _grid_template(), DEFAULT).answers[0]
    sensitive = decide(_fills(rows), _grid_template(), SENSITIVE).answers[0]
    assert default.answer_raw == ""
    assert default.reason == "light_mark"
    assert default.needs_review
    assert sensitive.answer_raw == "B"
    assert sensitive.reason == "light_mark"


def test_erasure_residue_is_not_a_mark() -> None:
    rows = [[0.16, 0.9, 0.03, 0.02]] + [[0.02, 0.9, 0.03, 0.02]] * 3
    for settings in (DEFAULT, SENSITIVE):
        answer = decide(_fills(rows), _grid_template(), settings).answers[0]
        assert answer.answer_raw == "B"
        assert answer.reason == "erased"


def test_confidence_falls_to_zero_at_threshold() -> None:
    at = DEFAULT.min_fill + 0.03  # 0.01 above the threshold over 0.02 paper
    rows = [[0.02, at, 0.02, 0.02]] + [[0.02, 0.9, 0.03, 0.02]] * 3
    answer = decide(_fills(rows), _grid_template(), DEFAULT).answers[0]
    assert answer.answer_raw == "B"
    assert answer.confidence_score < 0.1
    assert answer.reason == "near_threshold"
    assert answer.needs_review


def test_confidence_is_in_unit_range() -> None:
    rng = np.random.default_rng(5)
    template = _grid_template(fields=40)
    for _ in range(20):
        fills = rng.uniform(0, 1, template.n_bubbles).astype(np.float32)
        for answer in decide(fills, template, DEFAULT).answers:
            assert 0.0 <= answer.confidence_score <= 1.0
            assert answer.reason in REASONS


def test_one_bubble_fields_use_sheet_threshold() -> None:
    # A single bubble is its own minimum, so a per-field background would
    # read every mark as blank; the sheet-level background reads it.
    template = _grid_template(fields=6, options=1)
    fills = np.array([0.85, 0.01, 0.02, 0.9, 0.01, 0.02], dtype=np.float32)
    raws = [a.answer_raw for a in decide(fills, template, DEFAULT).answers]
    assert raws == ["A", "", "", "A", "", ""]


def test_two_bubble_fields_use_sheet_threshold() -> None:
    template = _grid_template(fields=4, options=2)
    fills = _fills([[0.3, 0.32], [0.02, 0.9], [0.03, 0.02], [0.9, 0.02]])
    raws = [a.answer_raw for a in decide(fills, template, DEFAULT).answers]
    # The first field's two light greys differ little; with a per-field
    # background one of them would count as a 0.3 jump above the other.
    assert raws == ["", "B", "", "A"]


def test_all_marked_field_still_reads_all() -> None:
    rows = [[0.9, 0.88, 0.92, 0.9]] + [[0.02, 0.9, 0.03, 0.02]] * 3
    answer = decide(_fills(rows), _grid_template(), DEFAULT).answers[0]
    assert answer.answer_raw == "ABCD"


def test_blank_sheet_is_flagged() -> None:
    template = _grid_template()
    reading = decide(np.full(template.n_bubbles, 0.02, np.float32), template, DEFAULT)
    assert reading.blank_sheet
    assert reading.blank_blocks == ("Block",)
    assert all(a.answer_raw == "" for a in reading.answers)
    assert all(a.needs_review for a in reading.answers)


def test_wrong_fill_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        decide(np.zeros(3, np.float32), _grid_template(), DEFAULT)


def test_redecide_matches_a_fresh_read(
    demo: Template, rng: np.random.Generator, tmp_path: Path
) -> None:
    path = tmp_path / "sheet.jpg"
    path.write_bytes(render_sheet(demo, random_truth(demo, rng, "light"), rng))
    default = BUILTIN_PROFILES[1].settings
    sensitive = BUILTIN_PROFILES[2].settings
    stored = read_sheet(path, demo, default)
    again = redecide(stored, demo, sensitive)
    fresh = read_sheet(path, demo, sensitive)
    assert again.answers == fresh.answers
    assert again.measurement_hash == stored.measurement_hash


def test_redecide_rejects_other_measurement(
    demo: Template, rng: np.random.Generator, tmp_path: Path
) -> None:
    path = tmp_path / "sheet.jpg"
    path.write_bytes(render_sheet(demo, random_truth(demo, rng, "clean"), rng))
    stored = read_sheet(path, demo, ProfileSettings())
    blurred = parse_profile_settings({"measurement": {"blur_ksize": 3}})
    with pytest.raises(MeasurementMismatchError, match="read the sheet images again"):
        redecide(stored, demo, blurred)


def test_decision_settings_are_plain_data() -> None:
    assert DecisionSettings() == BUILTIN_PROFILES[1].settings.decision


def test_answers_equal_keyword_built_answers(demo: Template) -> None:
    # decide builds each Answer with tuple.__new__ from all its values, so
    # each answer must equal one built by the constructor with keywords.
    fills = np.random.default_rng(8).uniform(0, 1, demo.n_bubbles).astype(np.float32)
    answers = decide(fills, demo, SENSITIVE).answers
    for answer in answers:
        rebuilt = Answer(**answer._asdict())
        assert rebuilt == answer
        assert hash(rebuilt) == hash(answer)
        assert type(answer) is Answer
        assert type(answer.fills) is tuple
    with pytest.raises(AttributeError):
        answers[0].reason = "clear"  # type: ignore[misc]


def _wide_template(options: int) -> Template:
    data: dict[str, Any] = {
        "pageDimensions": [40 + 30 * options, 100],
        "bubbleDimensions": [20, 20],
        "fieldBlocks": {
            "Block": {
                "bubbleValues": [f"v{i}" for i in range(options)],
                "direction": "horizontal",
                "origin": [20, 30],
                "fieldLabels": ["q1"],
                "bubblesGap": 30,
                "labelsGap": 40,
            }
        },
    }
    return load_template(data)


@pytest.mark.parametrize("options", [8, 63, 64, 70])
def test_marks_spell_bubble_values_in_order(options: int) -> None:
    # Up to 63 bubbles a field's marks are looked up by bit mask; wider
    # fields spell them bubble by bubble.
    template = _wide_template(options)
    fills = np.full(options, 0.02, dtype=np.float32)
    fills[[0, 5, options - 1]] = (0.9, 0.95, 0.5)
    settings = dataclasses.replace(DEFAULT, multi_mark_gap=0.3)
    for _ in range(2):  # the second read finds the spelling in the table
        answer = decide(fills, template, settings).answers[0]
        assert answer.answer_raw == f"v0v5v{options - 1}"
        assert answer.answer_corrected == "*"
    fills[5] = 0.02
    answer = decide(fills, template, settings).answers[0]
    assert answer.answer_raw == f"v0v{options - 1}"
    assert answer.answer_corrected == "v0"


def test_spelling_table_stops_growing() -> None:
    template = _wide_template(14)
    plan = answer_plan(template)
    rng = np.random.default_rng(2)
    for _ in range(6000):
        marked = rng.random((1, 14)) < 0.5
        spelled = spell_marks(plan, marked)
        expected = "".join(f"v{j}" for j in np.flatnonzero(marked[0]))
        assert spelled == [expected]
    assert len(plan.spellings[0]) == answer_plan_module._MAX_CACHED_SPELLINGS


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.6, 0.999, 1.0])
def test_sheet_quantile_equals_numpy_quantile(q: float) -> None:
    rng = np.random.default_rng(17)
    for size in (1, 2, 3, 7, 850, 851):
        for _ in range(50):
            values = rng.random(size, dtype=np.float32)
            values[rng.random(size) < 0.3] = 0.0  # zeros tie, as blank bubbles do
            expected = float(np.quantile(values, q))
            assert decide_module._linear_quantile(values, q) == expected
    with_nan = np.array([0.1, np.nan, 0.3], dtype=np.float32)
    assert np.isnan(decide_module._linear_quantile(with_nan, q))
