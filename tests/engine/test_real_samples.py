"""Engine accuracy on real, already-aligned sample scans.

Each folder in ``tests/data/samples/`` contains the images of one sheet layout,
its ``template.json`` and ``expected.csv`` (``file_name``, then one column per
output column, ``""`` for no mark). Every image is read with the Default
profile, and every trusted field must equal ``expected.csv``.
``tests/data/README.md`` gives the source of each expected value.

Doubtful fields are not compared with ``expected.csv``. `DOUBTFUL_READINGS`
records our engine's current reading of each one instead, so a change in that
reading fails as well and gets a look at the image.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import pytest

from omr_desktop.engine.decide import SheetReading
from omr_desktop.engine.profile import BUILTIN_PROFILES
from omr_desktop.engine.reader import read_sheet
from omr_desktop.engine.template import Template, load_template

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "samples"
DEFAULT_PROFILE_ID = 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
EXPECTED_SAMPLES = {
    "EricSoOSU",
    "Sandeep-1507",
    "Shamanth",
    "dxuian",
    "ibrahimkilic",
    "sample6",
    "samuelIkoli",
}

_BOOKLET_GRID = (
    "the template's booklet grid misses the printed bubbles (column step too "
    "short, row step too long) and numbers the rows 0-9 where the sheet prints "
    "1-9 then 0; expected.csv has the number read by eye"
)

# (sample, image, output column) -> (our current reading, why expected.csv is
# not trusted there). Update the reading only after checking the image.
DOUBTFUL_READINGS: dict[tuple[str, str, str], tuple[str, str]] = {
    ("Sandeep-1507", "omr-1.png", "Booklet_No"): ("01no0nono0", _BOOKLET_GRID),
    ("Sandeep-1507", "omr-2.png", "Booklet_No"): ("nono22nonono", _BOOKLET_GRID),
    ("Sandeep-1507", "omr-3.png", "Booklet_No"): ("no0nono2no3", _BOOKLET_GRID),
    ("Sandeep-1507", "omr-1.png", "q29"): (
        "A",
        "A is solid but C is only an inked ring with a white centre",
    ),
    ("Sandeep-1507", "omr-1.png", "q42"): (
        "B",
        "B is solid but D has a thin inked ring",
    ),
    ("dxuian", "omrcollegesheet.jpg", "Q61"): (
        "A",
        "A is solid but B is half-filled in mid grey (partial mark or erasure)",
    ),
}


def _sample_names() -> list[str]:
    return sorted(path.parent.name for path in SAMPLES_DIR.glob("*/template.json"))


@functools.cache
def _expected_table(sample: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Read one expected.csv: its output columns, and image -> column -> value."""
    path = SAMPLES_DIR / sample / "expected.csv"
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    columns = header[1:]
    return columns, {row.pop("file_name"): row for row in rows}


def _image_cases() -> list[object]:
    return [
        pytest.param(sample, image, id=f"{sample}/{image}")
        for sample in _sample_names()
        for image in _expected_table(sample)[1]
    ]


@functools.cache
def _template(sample: str) -> Template:
    return load_template(SAMPLES_DIR / sample / "template.json")


@functools.cache
def _reading(sample: str, image: str) -> SheetReading:
    """Read one image with the Default profile, once per test run."""
    settings = BUILTIN_PROFILES[DEFAULT_PROFILE_ID].settings
    return read_sheet(SAMPLES_DIR / sample / image, _template(sample), settings)


def _reading_values(sample: str, image: str) -> dict[str, str]:
    """Return our value of every output column: answer_raw or the identifier."""
    reading = _reading(sample, image)
    values = {answer.question: answer.answer_raw for answer in reading.answers}
    overlap = set(values) & set(reading.identifiers)
    assert not overlap, f"{sample}/{image}: both question and identifier: {overlap}"
    values.update(reading.identifiers)
    return values


def test_all_samples_present() -> None:
    assert _sample_names() == sorted(EXPECTED_SAMPLES)


@pytest.mark.parametrize("sample", _sample_names())
def test_expected_columns_match_template(sample: str) -> None:
    columns, _ = _expected_table(sample)
    assert columns == list(_template(sample).output_columns)


@pytest.mark.parametrize("sample", _sample_names())
def test_expected_csv_lists_every_image(sample: str) -> None:
    images = {
        path.name
        for path in (SAMPLES_DIR / sample).iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES
    }
    assert set(_expected_table(sample)[1]) == images


@pytest.mark.parametrize(("sample", "image"), _image_cases())
def test_reading_has_every_output_column(sample: str, image: str) -> None:
    ours = _reading_values(sample, image)
    assert sorted(ours) == sorted(_template(sample).output_columns)


@pytest.mark.parametrize(("sample", "image"), _image_cases())
def test_trusted_fields_match_expected(sample: str, image: str) -> None:
    expected = _expected_table(sample)[1][image]
    ours = _reading_values(sample, image)
    trusted = [c for c in expected if (sample, image, c) not in DOUBTFUL_READINGS]

    mismatches = [
        f"{sample}/{image} {column}: expected {expected[column]!r}, "
        f"got {ours.get(column, '<missing>')!r}"
        for column in trusted
        if ours.get(column) != expected[column]
    ]
    assert not mismatches, (
        f"{len(mismatches)} of {len(trusted)} trusted fields differ:\n"
        + "\n".join(mismatches)
    )


@pytest.mark.parametrize(("sample", "image"), _image_cases())
def test_blank_sheet_flag_matches_expected(sample: str, image: str) -> None:
    expected = _expected_table(sample)[1][image]
    all_blank = all(value == "" for value in expected.values())
    assert _reading(sample, image).blank_sheet is all_blank


@pytest.mark.parametrize(
    ("sample", "image", "column"),
    sorted(DOUBTFUL_READINGS),
    ids=[f"{s}/{i}/{c}" for s, i, c in sorted(DOUBTFUL_READINGS)],
)
def test_doubtful_field_reading_unchanged(sample: str, image: str, column: str) -> None:
    recorded, reason = DOUBTFUL_READINGS[sample, image, column]
    expected = _expected_table(sample)[1][image][column]
    got = _reading_values(sample, image).get(column, "<missing>")
    assert got == recorded, (
        f"{sample}/{image} {column}: our reading changed from {recorded!r} to "
        f"{got!r}; expected.csv has {expected!r} but is doubtful because {reason}. "
        "Check the image, then update DOUBTFUL_READINGS."
    )


def test_doubtful_readings_name_real_fields() -> None:
    unknown = []
    for sample, image, column in DOUBTFUL_READINGS:
        if sample not in _sample_names():
            unknown.append(f"{sample}: no such sample")
            continue
        columns, rows = _expected_table(sample)
        if image not in rows:
            unknown.append(f"{sample}/{image}: no such image in expected.csv")
        if column not in columns:
            unknown.append(f"{sample} {column}: no such column in expected.csv")
    assert not unknown, "\n".join(unknown)
