"""Template loading: OMRChecker v1 format, validation, JSON round trip."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omr_desktop.engine.synthetic import random_truth, render_sheet_image
from omr_desktop.engine.template import (
    FieldKind,
    Template,
    TemplateError,
    load_template,
)

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def _minimal() -> dict[str, Any]:
    return {
        "pageDimensions": [300, 400],
        "bubbleDimensions": [20, 20],
        "fieldBlocks": {
            "MCQ": {
                "fieldType": "QTYPE_MCQ4",
                "origin": [50, 40],
                "fieldLabels": ["q1..3"],
                "bubblesGap": 30,
                "labelsGap": 40,
            }
        },
    }


def test_range_labels_expand_in_order() -> None:
    template = load_template(_minimal())
    assert [f.label for f in template.fields] == ["q1", "q2", "q3"]


def test_horizontal_block_positions() -> None:
    template = load_template(_minimal())
    q2 = template.field_by_label("q2")
    assert [(b.value, b.x, b.y) for b in q2.bubbles] == [
        ("A", 50, 80),
        ("B", 80, 80),
        ("C", 110, 80),
        ("D", 140, 80),
    ]
    assert (q2.bubbles[0].width, q2.bubbles[0].height) == (20, 20)


def test_fractional_gaps_accumulate_without_drift() -> None:
    data = _minimal()
    data["fieldBlocks"]["MCQ"]["labelsGap"] = 26.7
    data["fieldBlocks"]["MCQ"]["fieldLabels"] = ["q1..10"]
    template = load_template(data)
    assert template.field_by_label("q10").bubbles[0].y == round(40 + 9 * 26.7)


def test_vertical_int_field_and_custom_label() -> None:
    data = _minimal()
    data["fieldBlocks"]["Roll"] = {
        "fieldType": "QTYPE_INT",
        "origin": [220, 20],
        "fieldLabels": ["roll1..2"],
        "bubblesGap": 30,
        "labelsGap": 25,
    }
    data["customLabels"] = {"Roll": ["roll1..2"]}
    template = load_template(data)
    roll2 = template.field_by_label("roll2")
    assert [b.value for b in roll2.bubbles] == list("0123456789")
    assert (roll2.bubbles[1].x, roll2.bubbles[1].y) == (245, 50)
    assert template.output_columns == ("Roll", "q1", "q2", "q3")
    assert template.identifier_columns == ("Roll",)
    assert roll2.kind is FieldKind.IDENTIFIER


@pytest.mark.parametrize(
    ("field_type", "values"),
    [
        ("QTYPE_MCQ5", "ABCDE"),
        ("QTYPE_MCQ4_RTL", "DCBA"),
        ("QTYPE_MCQ5_RTL", "EDCBA"),
        ("QTYPE_INT_FROM_1", "1234567890"),
    ],
)
def test_builtin_field_types(field_type: str, values: str) -> None:
    data = _minimal()
    data["fieldBlocks"]["MCQ"]["fieldType"] = field_type
    data["fieldBlocks"]["MCQ"]["bubblesGap"] = 10
    data["fieldBlocks"]["MCQ"]["labelsGap"] = 10
    template = load_template(data)
    assert "".join(b.value for b in template.fields[0].bubbles) == values


def test_bubble_values_with_direction() -> None:
    data = _minimal()
    block = data["fieldBlocks"]["MCQ"]
    del block["fieldType"]
    block.update(bubbleValues=["yes"], direction="horizontal", emptyValue="no")
    template = load_template(data)
    assert [len(f.bubbles) for f in template.fields] == [1, 1, 1]
    assert template.fields[0].empty_value == "no"


def test_template_empty_value_is_inherited() -> None:
    data = _minimal()
    data["emptyValue"] = "-"
    template = load_template(data)
    assert template.empty_value == "-"
    assert {f.empty_value for f in template.fields} == {"-"}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            lambda d: d["fieldBlocks"]["MCQ"].update(origin=[290, 40]),
            ["MCQ", "q1", "off"],
        ),
        (
            lambda d: d["fieldBlocks"]["MCQ"].update(fieldLabels=["q1", "q1"]),
            ["MCQ", "q1", "duplicate"],
        ),
        (
            lambda d: d["fieldBlocks"]["MCQ"].update(fieldLabels=["q4..2"]),
            ["MCQ", "q4..2"],
        ),
        (
            lambda d: d["fieldBlocks"]["MCQ"].update(fieldLabels=["q1.x.4"]),
            ["MCQ", "q1.x.4"],
        ),
        (
            lambda d: d["fieldBlocks"]["MCQ"].update(fieldType="QTYPE_MCQ9"),
            ["MCQ", "QTYPE_MCQ9"],
        ),
        (lambda d: d.update(customLabels={"Roll": ["nope"]}), ["Roll", "nope"]),
        (lambda d: d.update(colour="red"), ["colour"]),
        (lambda d: d.pop("pageDimensions"), ["pageDimensions"]),
        (lambda d: d.update(preProcessors=[{"name": "Sharpen"}]), ["Sharpen"]),
    ],
    ids=[
        "off-page",
        "duplicate",
        "reversed-range",
        "bad-range",
        "unknown-type",
        "custom-missing",
        "unknown-key",
        "missing-key",
        "unknown-preprocessor",
    ],
)
def test_invalid_template_names_block_and_field(change: Any, words: list[str]) -> None:
    data = _minimal()
    change(data)
    with pytest.raises(TemplateError) as info:
        load_template(data)
    for word in words:
        assert word in str(info.value)


def test_duplicate_label_across_blocks() -> None:
    data = _minimal()
    data["fieldBlocks"]["Other"] = copy.deepcopy(data["fieldBlocks"]["MCQ"])
    data["fieldBlocks"]["Other"]["origin"] = [50, 200]
    with pytest.raises(TemplateError, match="'Other'.*'q1'.*duplicate"):
        load_template(data)


def test_tone_preprocessors_become_tone_settings() -> None:
    data = _minimal()
    data["preProcessors"] = [
        {"name": "Levels", "options": {"low": 0.7, "high": 0.8}},
        {"name": "GaussianBlur", "options": {"kSize": [3, 3], "sigmaX": 0}},
        {"name": "MedianBlur", "options": {"kSize": 5}},
    ]
    tone = load_template(data).tone
    assert (tone.levels_low, tone.levels_high) == (0.7, 0.8)
    assert tone.gaussian_ksize == 3
    assert tone.median_ksize == 5


def test_geometric_preprocessors_are_recorded_and_not_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = _minimal()
    data["preProcessors"] = [{"name": "CropOnMarkers", "options": {}}]
    template = load_template(data)
    assert template.ignored_preprocessors == ("CropOnMarkers",)
    assert "not applied" in caplog.text


def test_identifier_override() -> None:
    template = load_template(_minimal(), identifier_columns=["q2"])
    assert template.identifier_columns == ("q2",)
    assert template.question_columns == ("q1", "q3")


def test_real_templates_round_trip_through_json() -> None:
    paths = sorted(SAMPLES.glob("*/template.json"))
    assert paths
    for path in paths:
        template = load_template(path)
        stored = json.loads(json.dumps(template.to_dict()))
        assert Template.from_dict(stored) == template, path


def test_sandeep_template_shape() -> None:
    template = load_template(SAMPLES / "Sandeep-1507" / "template.json")
    assert (template.page_width, template.page_height) == (1189, 1682)
    assert template.n_bubbles == 870
    assert template.output_columns[:3] == ("Booklet_No", "q1", "q2")
    assert template.identifier_columns == ("Booklet_No",)
    assert len(template.question_columns) == 200
    assert template.tone.gaussian_ksize == 3


def test_missing_template_file(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="failed to read"):
        load_template(tmp_path / "none.json")


def test_stored_template_with_wrong_format() -> None:
    with pytest.raises(TemplateError, match="format"):
        Template.from_dict({"format": "other"})


def test_pickle_drops_engine_caches(demo: Template) -> None:
    rng = np.random.default_rng(1)
    render_sheet_image(demo, random_truth(demo, rng, "clean"), rng)  # fills caches
    data = pickle.dumps(demo)
    assert len(data) < 1_000_000
    copy_ = pickle.loads(data)
    assert copy_ == demo
    assert copy_.question_columns == demo.question_columns


def test_stored_field_without_bubbles_is_rejected(demo: Template) -> None:
    stored = demo.to_dict()
    stored["fields"][3]["bubbles"] = []
    label = stored["fields"][3]["label"]
    with pytest.raises(TemplateError, match=f"field '{label}' has no bubbles"):
        Template.from_dict(stored)
