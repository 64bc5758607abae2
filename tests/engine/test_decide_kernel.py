"""The compiled decision kernel and the answer columns: identical to numpy.

Every decision array is compared byte for byte, so that a sheet reads the
same whichever path an install has, down to the sign of a zero and the
sign bit of a NaN.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from omr_desktop.engine import AnswerColumns, SheetReading, kernels
from omr_desktop.engine.image import load_sheet_for_measuring
from omr_desktop.engine.layout import FieldLayout, field_layout
from omr_desktop.engine.measure import measure_fills
from omr_desktop.engine.profile import BUILTIN_PROFILES, DecisionSettings
from omr_desktop.engine.template import Template, load_template
from omr_desktop.pipeline.copy_rows import encode_answer_columns, encode_answers

# The module, which the package's `decide` function hides.
decide_module = importlib.import_module("omr_desktop.engine.decide")

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "samples"
COMPILED = kernels.compiled
_FIELDS = ("marked", "n_marked", "resolved", "darkest", "confidence", "needs_review")


def _numpy_decisions(
    fills: npt.NDArray[np.float32], layout: FieldLayout, settings: DecisionSettings
) -> Any:
    with np.errstate(all="ignore"):
        relative = decide_module._relative_fills(fills, layout)
        return decide_module._decide_fields(relative, layout, settings)


def _assert_same_decisions(compiled: Any, reference: Any, context: object) -> None:
    assert compiled is not None, context
    for name in _FIELDS:
        ours = np.asarray(getattr(compiled, name))
        theirs = np.asarray(getattr(reference, name))
        if name in ("n_marked", "darkest"):
            theirs = theirs.astype(np.int64)
        assert ours.dtype == theirs.dtype, (name, context)
        assert ours.tobytes() == theirs.tobytes(), (name, context)
    assert list(compiled.reason) == list(reference.reason), context


def _random_fills(rng: np.random.Generator, n: int, kind: int) -> npt.NDArray[Any]:
    if kind == 0:
        return rng.random(n)
    if kind == 1:  # faint paper with some dark marks
        fills = rng.random(n) * 0.3
        marks = rng.integers(0, n, max(1, n // 5))
        fills[marks] = rng.random(marks.size) * 0.5 + 0.5
        return fills
    if kind == 2:  # few distinct values: ties everywhere
        return np.round(rng.random(n) * 4) / 4
    fills = np.zeros(n)  # almost blank, exact zeros
    fills[rng.integers(0, n, 3)] = 1.0
    return fills


def _random_settings(rng: np.random.Generator, index: int) -> DecisionSettings:
    policy = ("darkest", "star", "all")[index % 3]
    if index % 2:
        return DecisionSettings(multi_mark_policy=policy)
    # Unusual settings too: zero and negative thresholds, and zero and
    # negative bands, which the kernel leaves to numpy.
    values = rng.choice([0.0, 0.05, 0.15, 0.25, 0.45, 0.6, 0.9, 1.0, -0.1], 9)
    return DecisionSettings(*(float(v) for v in values), multi_mark_policy=policy)


def _labels(first: int, count: int) -> str:
    return f"q{first}..{first + count - 1}" if count > 1 else f"q{first}"


def _grid_template(rng: np.random.Generator) -> Template:
    """A page of blocks of 1 to 8 options, so fields of 1, 2 and more bubbles."""
    blocks: dict[str, object] = {}
    y = 10
    for number in range(int(rng.integers(1, 5))):
        options = int(rng.integers(1, 9))
        fields = int(rng.integers(1, 8))
        blocks[f"Block{number}"] = {
            "bubbleValues": [chr(ord("A") + i) for i in range(options)],
            "direction": "horizontal",
            "origin": [10, y],
            "fieldLabels": [_labels(100 * number + 1, fields)],
            "bubblesGap": 30,
            "labelsGap": 30,
        }
        y += 30 * fields + 20
    return load_template(
        {
            "pageDimensions": [300, y + 10],
            "bubbleDimensions": [20, 20],
            "fieldBlocks": blocks,
            "preProcessors": [],
        }
    )


def test_install_built_the_decision_kernel() -> None:
    assert COMPILED is not None, kernels.unavailable_reason
    assert hasattr(COMPILED, "decide_fields")


def test_field_decisions_match_numpy(demo: Template) -> None:
    rng = np.random.default_rng(2027)
    templates = [demo] + [_grid_template(rng) for _ in range(12)]
    compared = 0
    fell_back = 0
    for t, template in enumerate(templates):
        layout = field_layout(template)
        for i in range(250 if template is demo else 60):
            fills = _random_fills(rng, template.n_bubbles, i % 4).astype(np.float32)
            settings = _random_settings(rng, i)
            with np.errstate(all="ignore"):
                compiled = decide_module._compiled_decisions(fills, layout, settings)
            if compiled is None:
                # A band that is not positive would divide by zero or flip
                # signs on the way, so the numpy path decides.
                assert min(settings.uncertain_below, settings.uncertain_above) <= 0
                fell_back += 1
                continue
            reference = _numpy_decisions(fills, layout, settings)
            _assert_same_decisions(compiled, reference, (t, i, settings))
            compared += 1
    assert compared > 700
    assert fell_back > 50


@pytest.mark.parametrize("unusual", [np.nan, -np.nan, np.inf, -np.inf, -0.0], ids=str)
def test_unusual_fills_fall_back_to_numpy(demo: Template, unusual: float) -> None:
    # Stored fills from elsewhere may hold values a measurement never gives,
    # and numpy's own handling of them then decides.
    fills = np.random.default_rng(3).random(demo.n_bubbles).astype(np.float32)
    fills[17] = unusual
    layout = field_layout(demo)
    assert decide_module._compiled_decisions(fills, layout, DecisionSettings()) is None
    with np.errstate(all="ignore"):
        reading = decide_module.decide(fills, demo, DecisionSettings())
        with kernels.numpy_path():
            reference = decide_module.decide(fills, demo, DecisionSettings())
    # A NaN confidence equals no other NaN, so the rows are compared as bytes.
    assert encode_answer_columns(1, reading.columns) == encode_answer_columns(
        1, reference.columns
    )


def _one_question(values: str) -> Template:
    return load_template(
        {
            "pageDimensions": [300, 100],
            "bubbleDimensions": [20, 20],
            "fieldBlocks": {
                "Block": {
                    "bubbleValues": list(values),
                    "direction": "horizontal",
                    "origin": [10, 10],
                    "fieldLabels": ["q1"],
                    "bubblesGap": 30,
                    "labelsGap": 30,
                }
            },
            "preProcessors": [],
        }
    )


def _assert_same_rows(
    fills: npt.NDArray[np.float32], template: Template, settings: DecisionSettings
) -> None:
    with np.errstate(all="ignore"):
        reading = decide_module.decide(fills, template, settings)
        with kernels.numpy_path():
            reference = decide_module.decide(fills, template, settings)
    assert encode_answer_columns(1, reading.columns) == encode_answer_columns(
        1, reference.columns
    )


def test_infinite_background_falls_back_to_numpy() -> None:
    # Finite fills far apart overflow the float32 interpolation of the sheet
    # background, which becomes NaN.
    template = _one_question("ABCDE")
    fills = np.array([-3e38, -3e38, 3e38, 3e38, 3e38], dtype=np.float32)
    layout = field_layout(template)
    with np.errstate(all="ignore"):
        assert (
            decide_module._compiled_decisions(fills, layout, DecisionSettings()) is None
        )
    _assert_same_rows(fills, template, DecisionSettings())


@pytest.mark.parametrize(
    "settings",
    [
        DecisionSettings(min_fill=0.5, uncertain_above=0.0),
        DecisionSettings(uncertain_below=-0.1),
        DecisionSettings(min_fill=float("nan")),
        DecisionSettings(min_jump=float("-inf")),
    ],
    ids=["zero band", "negative band", "NaN threshold", "infinite jump"],
)
def test_unusual_settings_fall_back_to_numpy(settings: DecisionSettings) -> None:
    # numpy's reduction over a single field returns a NaN of another sign
    # than its element-by-element minimum, so such settings go to numpy.
    template = _one_question("ABCD")
    fills = np.array([0.0, 0.5, 0.0, 0.0], dtype=np.float32)
    layout = field_layout(template)
    assert decide_module._compiled_decisions(fills, layout, settings) is None
    _assert_same_rows(fills, template, settings)


def test_signalling_nan_fill_encodes_like_answers() -> None:
    template = _one_question("ABCD")
    fills = np.array([0.0, 0.5, 0.0, 0.0], dtype=np.float32)
    fills.view(np.uint32)[0] = 0x7F800001  # a signalling NaN
    with np.errstate(all="ignore"):
        reading = decide_module.decide(fills, template, DecisionSettings())
    assert encode_answer_columns(1, reading.columns) == encode_answers(
        1, reading.answers
    )


def _sample_pages() -> list[tuple[str, Path]]:
    pages = []
    for folder in sorted(SAMPLES_DIR.iterdir()):
        if (folder / "template.json").is_file():
            images = sorted(
                p for p in folder.iterdir() if p.suffix in {".png", ".jpg", ".jpeg"}
            )
            pages.extend((folder.name, image) for image in images)
    return pages


def _assert_same_reading(reading: SheetReading, reference: SheetReading) -> None:
    assert reading.answers == reference.answers
    assert reading.identifiers == reference.identifiers
    assert reading.identifiers_in_doubt == reference.identifiers_in_doubt
    assert reading.blank_blocks == reference.blank_blocks
    assert reading.blank_sheet == reference.blank_sheet
    assert np.array_equal(reading.marked, reference.marked)
    assert encode_answer_columns(5, reading.columns) == encode_answer_columns(
        5, reference.columns
    )


@pytest.mark.parametrize(
    ("sample", "path"), _sample_pages(), ids=lambda v: getattr(v, "name", v)
)
def test_real_sample_readings_match_numpy(sample: str, path: Path) -> None:
    # Real templates join digit fields into identifier columns (customLabels)
    # and have fields of one or two bubbles.
    template = load_template(SAMPLES_DIR / sample / "template.json")
    image = load_sheet_for_measuring(path, template)
    for profile in BUILTIN_PROFILES.values():
        fills = measure_fills(image, template, profile.settings.measurement)
        reading = decide_module.decide(fills, template, profile.settings.decision)
        with kernels.numpy_path():
            reference = decide_module.decide(fills, template, profile.settings.decision)
        _assert_same_reading(reading, reference)


def _decide_arguments(
    layout: FieldLayout, fills: npt.NDArray[np.float32]
) -> list[object]:
    n_fields, width = layout.valid.shape
    return [
        fills,
        layout.counts_int64,
        width,
        0.1,
        0.2,
        (0.45, 0.2, 0.25, 0.08, 0.2, 0.25, 0.15, 0.6, 0.9),
        True,
        np.empty((n_fields, width), np.bool_),
        np.empty(n_fields, np.int64),
        np.empty(n_fields, np.bool_),
        np.empty(n_fields, np.int64),
        np.empty(n_fields, np.float64),
        np.empty(n_fields, np.int64),
        np.empty(n_fields, np.bool_),
        fills.size,
        n_fields,
    ]


def test_decide_fields_rejects_bad_arguments(demo: Template) -> None:
    assert COMPILED is not None
    layout = field_layout(demo)
    fills = np.zeros(demo.n_bubbles, np.float32)

    def call(position: int, value: object) -> None:
        arguments = _decide_arguments(layout, fills)
        arguments[position] = value
        COMPILED.decide_fields(*arguments)

    too_many = layout.counts_int64.copy()
    too_many[-1] += 1
    with pytest.raises(ValueError, match="fills left"):
        call(1, too_many)
    too_few = layout.counts_int64.copy()
    too_few[0] -= 1
    with pytest.raises(
        ValueError, match="the fields have 849 bubbles in all, but there are 850 fills"
    ):
        call(1, too_few)
    negative = layout.counts_int64.copy()
    negative[3] = -1
    with pytest.raises(ValueError, match="field 3 has -1 bubbles"):
        call(1, negative)
    narrow = _decide_arguments(layout, fills)
    narrow[2] = 4
    narrow[7] = np.empty((layout.valid.shape[0], 4), np.bool_)
    with pytest.raises(ValueError, match="field 0 has 10 bubbles: more than the width"):
        COMPILED.decide_fields(*narrow)
    with pytest.raises(ValueError, match="fills has 3400 bytes"):
        call(14, demo.n_bubbles + 1)
    with pytest.raises(ValueError, match="confidence has"):
        call(11, np.empty(3, np.float64))
    with pytest.raises(ValueError, match="invalid sizes"):
        call(2, 0)
    with pytest.raises(TypeError):
        call(5, (0.45, 0.2))  # too few settings


def test_decide_fields_rejects_shared_outputs(demo: Template) -> None:
    assert COMPILED is not None
    layout = field_layout(demo)
    arguments = _decide_arguments(layout, np.zeros(demo.n_bubbles, np.float32))
    arguments[12] = arguments[10]  # rule and darkest in one buffer
    with pytest.raises(ValueError, match="out shares memory with darkest"):
        COMPILED.decide_fields(*arguments)
    arguments = _decide_arguments(layout, np.zeros(demo.n_bubbles, np.float32))
    fills = np.zeros(demo.n_bubbles * 2, np.float32)
    arguments[0] = fills[: demo.n_bubbles]
    arguments[11] = fills.view(np.float64)[: layout.valid.shape[0]]
    with pytest.raises(ValueError, match="out shares memory with fills"):
        COMPILED.decide_fields(*arguments)


def test_columns_give_back_the_answers(demo: Template) -> None:
    fills = np.random.default_rng(11).random(demo.n_bubbles).astype(np.float32)
    reading = decide_module.decide(fills, demo, BUILTIN_PROFILES[2].settings.decision)
    answers = reading.answers
    assert len(answers) == len(reading.columns) == 150
    rebuilt = AnswerColumns.from_answers(answers)
    assert rebuilt.answers() == answers
    assert encode_answers(3, answers) == encode_answer_columns(3, reading.columns)
    # The answers are built once and kept.
    assert reading.answers is answers


def test_reading_with_answers_keeps_them(demo: Template) -> None:
    fills = np.random.default_rng(12).random(demo.n_bubbles).astype(np.float32)
    answers = decide_module.decide(fills, demo, DecisionSettings()).answers
    reading = SheetReading.with_answers(
        answers, identifiers={}, blank_sheet=False, fills=fills
    )
    assert reading.answers is not None
    assert reading.answers == answers
    empty = SheetReading.with_answers((), identifiers={}, blank_sheet=True, fills=fills)
    assert empty.answers == ()
    assert len(empty.columns) == 0
    assert encode_answer_columns(1, empty.columns) == b""


def test_joined_columns_encode_like_their_answers() -> None:
    # A column joined from several fields (customLabels) takes the path that
    # builds answers first. Its columns must encode like its answers.
    template = load_template(
        {
            "pageDimensions": [300, 300],
            "bubbleDimensions": [20, 20],
            "customLabels": {"q5": ["part1..2"]},
            "fieldBlocks": {
                "Block": {
                    "bubbleValues": ["A", "B", "C", "D"],
                    "direction": "horizontal",
                    "origin": [10, 10],
                    "fieldLabels": ["q1..4", "part1..2"],
                    "bubblesGap": 30,
                    "labelsGap": 30,
                }
            },
            "preProcessors": [],
        }
    )
    plan = decide_module.answer_plan(template)
    assert [len(c.members) for c in plan.questions] == [1, 1, 1, 1, 2]
    rng = np.random.default_rng(13)
    for _ in range(20):
        fills = rng.random(template.n_bubbles).astype(np.float32)
        reading = decide_module.decide(fills, template, DecisionSettings())
        assert reading.columns.questions == ("q1", "q2", "q3", "q4", "q5")
        assert encode_answers(9, reading.answers) == encode_answer_columns(
            9, reading.columns
        )
        assert reading.columns.answers() == reading.answers
