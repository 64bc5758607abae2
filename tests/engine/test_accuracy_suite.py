"""The synthetic accuracy suite at CI size: 50 sheets per condition.

The seed (`CI_SEED`) differs from the seeds used while tuning the
built-in profiles; the full-size run is ``omr-desktop accuracy``.
"""

from __future__ import annotations

import argparse

import pytest

from omr_desktop.cli_engine import add_accuracy_arguments, run_accuracy
from omr_desktop.engine.accuracy import (
    CI_SEED,
    CI_SHEETS_PER_CONDITION,
    SuiteResult,
    check_targets,
    run_suite,
)


@pytest.fixture(scope="module")
def suite() -> SuiteResult:
    """Run the suite once for every test of this module (about 40 s)."""
    return run_suite(CI_SHEETS_PER_CONDITION, seed=CI_SEED)


def test_default_reads_every_solid_mark(suite: SuiteResult) -> None:
    for (condition, profile), score in suite.scores.items():
        if profile == "Default" and score.bubbles.get("solid"):
            assert score.rate("solid") == 1.0, condition


def test_default_reads_every_blank(suite: SuiteResult) -> None:
    for (condition, profile), score in suite.scores.items():
        if profile == "Default":
            assert score.read_marked.get("blank", 0) == 0, condition


def test_sensitive_reads_light_marks(suite: SuiteResult) -> None:
    score = suite.scores[("light", "Sensitive")]
    assert score.bubbles["light"] > 1000
    assert score.rate("light") >= 0.99


def test_sensitive_has_few_false_marks(suite: SuiteResult) -> None:
    for condition in ("erasure", "stray", "letters", "gradient", "blank"):
        score = suite.scores[(condition, "Sensitive")]
        seen = score.bubbles.get("blank", 0) + score.bubbles.get("erasure", 0)
        false = score.read_marked.get("blank", 0) + score.read_marked.get("erasure", 0)
        assert false <= 0.001 * seen, condition


def test_no_confident_wrong_answer(suite: SuiteResult) -> None:
    for key, score in suite.scores.items():
        assert score.confident_errors == 0, key


def test_clean_sheets_are_rarely_flagged(suite: SuiteResult) -> None:
    for profile in ("Default", "Sensitive", "Strict"):
        assert suite.scores[("clean", profile)].flagged_rate <= 0.01, profile


def test_demo_condition_changes_answers_between_profiles(suite: SuiteResult) -> None:
    default = suite.scores[("demo", "Default")]
    sensitive = suite.scores[("demo", "Sensitive")]
    assert 0.05 < 1 - default.accuracy < 0.15
    assert sensitive.accuracy > 0.99


def test_all_targets_met(suite: SuiteResult) -> None:
    assert check_targets(suite) == []


def test_accuracy_command_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_accuracy_arguments(parser)
    args = parser.parse_args(["--sheets", "2", "--condition", "clean"])
    assert run_accuracy(args) == 0
    out = capsys.readouterr().out
    assert "| clean | Default | 100.00 |" in out
    assert "all accuracy targets met" in out


def test_accuracy_command_rejects_zero_sheets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    add_accuracy_arguments(parser)
    assert run_accuracy(parser.parse_args(["--sheets", "0"])) == 2
    assert "--sheets" in capsys.readouterr().out
