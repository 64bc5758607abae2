"""Failures known from other readers, each on rendered sheets.

Every test renders real JPEG sheets with the generator, decodes them and
reads them with the built-in profiles.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from omr_desktop.engine.decide import SheetReading, decide
from omr_desktop.engine.image import decode_sheet_bytes
from omr_desktop.engine.measure import measure_fills
from omr_desktop.engine.profile import BUILTIN_PROFILES, ProfileSettings
from omr_desktop.engine.synthetic import (
    SheetTruth,
    _expected_answers,
    random_truth,
    render_sheet,
    render_sheet_image,
)
from omr_desktop.engine.template import Template

DEFAULT = BUILTIN_PROFILES[1].settings
SENSITIVE = BUILTIN_PROFILES[2].settings


def _read(
    template: Template,
    truth: SheetTruth,
    rng: np.random.Generator,
    settings: ProfileSettings = DEFAULT,
) -> SheetReading:
    data = render_sheet(template, truth, rng, quality=80)
    image = decode_sheet_bytes(data, template)
    return decide(
        measure_fills(image, template, settings.measurement),
        template,
        settings.decision,
    )


def _raw(reading: SheetReading) -> dict[str, str]:
    return {a.question: a.answer_raw for a in reading.answers}


def _blank_truth(template: Template, rng: np.random.Generator) -> SheetTruth:
    return random_truth(template, rng, "blank")


def test_blank_sheet_reads_blank_and_is_flagged(
    demo: Template, rng: np.random.Generator, builtin: ProfileSettings
) -> None:
    reading = _read(demo, _blank_truth(demo, rng), rng, builtin)
    assert reading.blank_sheet
    assert all(a.answer_raw == "" for a in reading.answers)
    assert all(a.needs_review for a in reading.answers)
    assert reading.identifiers["Roll"] == ""


def test_blank_block_is_flagged(demo: Template, rng: np.random.Generator) -> None:
    truth = random_truth(demo, rng, "clean")
    kinds = list(truth.kinds)
    column2 = [
        i for i, (f, _) in enumerate(demo.iter_bubbles()) if f.block == "Column2"
    ]
    for i in column2:
        kinds[i] = "blank"
    blanked = _with_kinds(demo, truth, kinds)
    reading = _read(demo, blanked, rng)
    assert reading.blank_blocks == ("Column2",)
    assert not reading.blank_sheet
    in_block = {f.label for f in demo.fields if f.block == "Column2"}
    for answer in reading.answers:
        if answer.question in in_block:
            assert answer.answer_raw == ""
            assert answer.needs_review
    others = [a for a in reading.answers if a.question not in in_block]
    assert not any(a.needs_review for a in others)


def _with_kinds(template: Template, truth: SheetTruth, kinds: list[str]) -> SheetTruth:
    keep = np.array([k != "blank" for k in kinds])
    return replace(
        truth,
        kinds=tuple(kinds),
        darkness=np.where(keep, truth.darkness, 0).astype(np.float32),
        coverage=np.where(keep, truth.coverage, 0).astype(np.float32),
        expected=_expected_answers(template, kinds),
    )


def test_shaded_bottom_keeps_blanks_blank(
    demo: Template, rng: np.random.Generator, builtin: ProfileSettings
) -> None:
    truth = random_truth(demo, rng, "gradient")
    image = render_sheet_image(demo, truth, rng)
    assert abs(float(np.median(image[-3:, :60])) - 150) < 8  # paper reaches 150
    reading = _read(demo, truth, rng, builtin)
    assert _raw(reading) == {c: truth.expected[c] for c in demo.question_columns}
    marked = reading.marked[np.array(truth.kinds) == "blank"]
    assert not marked.any()


def test_letters_in_bubbles_are_not_marks(
    demo: Template, rng: np.random.Generator, builtin: ProfileSettings
) -> None:
    truth = random_truth(demo, rng, "letters")
    assert truth.letters
    reading = _read(demo, truth, rng, builtin)
    assert not reading.marked[np.array(truth.kinds) == "blank"].any()
    assert _raw(reading) == {c: truth.expected[c] for c in demo.question_columns}


@pytest.mark.parametrize("shift", [-40, 40])
def test_darker_or_lighter_scan_reads_the_same(
    demo: Template, shift: int, builtin: ProfileSettings
) -> None:
    truth = random_truth(demo, np.random.default_rng(8), "clean")
    shifted = _replace_shift(truth, shift)
    plain = _read(demo, truth, np.random.default_rng(9), builtin)
    changed = _read(demo, shifted, np.random.default_rng(9), builtin)
    assert _raw(changed) == _raw(plain)
    assert changed.identifiers == plain.identifiers


def _replace_shift(truth: SheetTruth, shift: int) -> SheetTruth:
    return replace(truth, brightness_shift=shift)


def test_two_solid_marks_differ_from_blank(
    demo: Template, rng: np.random.Generator, builtin: ProfileSettings
) -> None:
    truth = random_truth(demo, rng, "multi")
    reading = _read(demo, truth, rng, builtin)
    doubles = [c for c in demo.question_columns if len(truth.expected[c]) == 2]
    assert doubles
    by_column = {a.question: a for a in reading.answers}
    for column in doubles:
        answer = by_column[column]
        assert answer.answer_raw == truth.expected[column]
        assert answer.answer_corrected == "*"
        assert answer.reason == "multi_mark"
        assert answer.needs_review
    blanks = [c for c in demo.question_columns if truth.expected[c] == ""]
    for column in blanks:
        assert by_column[column].answer_corrected == ""
        assert by_column[column].reason != "multi_mark"


def test_erasures_and_strays_are_not_marks(
    demo: Template, rng: np.random.Generator
) -> None:
    for condition in ("erasure", "stray"):
        truth = random_truth(demo, rng, condition)
        for settings in (DEFAULT, SENSITIVE):
            reading = _read(demo, truth, rng, settings)
            kinds = np.array(truth.kinds)
            assert not reading.marked[(kinds == "erasure") | (kinds == "stray")].any()
            assert _raw(reading) == {
                c: truth.expected[c] for c in demo.question_columns
            }


def test_sensitive_reads_light_marks_default_does_not(
    demo: Template, rng: np.random.Generator
) -> None:
    truth = random_truth(demo, rng, "light")
    light = np.array(truth.kinds) == "light"
    default = _read(demo, truth, rng)
    sensitive = _read(demo, truth, rng, SENSITIVE)
    assert not default.marked[light].any()
    assert sensitive.marked[light].all()


def test_roll_number_is_read(demo: Template, rng: np.random.Generator) -> None:
    truth = random_truth(demo, rng, "clean")
    reading = _read(demo, truth, rng)
    assert reading.identifiers == {"Roll": truth.expected["Roll"]}
    assert len(reading.identifiers["Roll"]) == 10
