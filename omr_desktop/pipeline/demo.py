"""The demo batch: generated sheets with students, an answer key and answers.

About one answer in ten is a light pencil mark that the Default profile
leaves blank and Sensitive reads, so reprocessing the demo with Sensitive
visibly changes answers and scores.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psycopg

from omr_desktop.engine import (
    BUILTIN_PROFILES,
    FieldKind,
    SheetReading,
    Template,
    read_sheet,
)
from omr_desktop.engine.synthetic import (
    MARKED_KINDS,
    SheetTruth,
    demo_template,
    random_truth,
    render_sheet,
)
from omr_desktop.pipeline.batch_load import (
    LoadResult,
    NewBatch,
    ProgressCallback,
    SheetJob,
    load_batch,
)

DEFAULT_SHEETS = 200
DEFAULT_QUESTIONS = 150
DEFAULT_OPTIONS = 5
DEFAULT_PROFILE_ID = 1

# Share of marked questions whose mark is the key's answer, so demo scores
# spread around 75 % as real exam scores do, rather than around chance.
SHARE_ANSWERED_RIGHT = 0.75

# JPEG quality of the demo scans; 90 matches the batch scanners' setting.
JPEG_QUALITY = 90

_FIRST_NAMES = (
    "Ada",
    "Ben",
    "Chloe",
    "Dev",
    "Elif",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Kira",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tariq",
    "Uma",
    "Viktor",
    "Wen",
    "Yara",
)
_LAST_NAMES = (
    "Adeyemi",
    "Berg",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Petrov",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Varga",
    "Weber",
    "Yilmaz",
    "Zhang",
    "Novak",
)


def seed_demo(
    conn: psycopg.Connection,
    data_dir: Path,
    *,
    sheets: int = DEFAULT_SHEETS,
    batch_name: str = "Demo",
    seed: int = 2026,
    workers: int = 2,
    progress: ProgressCallback | None = None,
) -> LoadResult:
    """Render ``sheets`` demo scans into the data folder and store them as a batch.

    Images go to a new folder ``<data_dir>/demo/<batch name>/``, or
    ``<batch name>-2/`` and so on when that name is taken, because a folder
    of that name may hold another batch's images. If storing fails, the new
    folder is removed again, so a failed demo leaves neither rows nor files.
    """
    if sheets < 1:
        raise ValueError(f"--sheets must be at least 1, not {sheets}.")
    template = demo_template(DEFAULT_QUESTIONS, DEFAULT_OPTIONS)
    rng = np.random.default_rng(seed)
    key = _answer_key(template, rng)
    try:
        image_dir = _new_image_dir(data_dir / "demo", _folder_name(batch_name))
    except OSError as exc:
        raise DemoImagesError(_cannot_write(data_dir / "demo", exc)) from exc
    batch = NewBatch(
        name=batch_name,
        template=template,
        template_name=f"Demo {DEFAULT_QUESTIONS}x{DEFAULT_OPTIONS}",
        profile_id=DEFAULT_PROFILE_ID,
        settings=BUILTIN_PROFILES[DEFAULT_PROFILE_ID].settings,
        key={question: [answer] for question, answer in key.items()},
        code_from_identifier=True,
    )
    jobs = [
        SheetJob(n, image_dir / f"sheet-{n:05d}.jpg", None, _student_name(rng))
        for n in range(1, sheets + 1)
    ]
    render = _SheetRenderer(template, key, seed, batch)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="demo") as executor:
            return load_batch(
                conn, batch, jobs, executor, workers, progress, read=render
            )
    except OSError as exc:
        shutil.rmtree(image_dir, ignore_errors=True)
        raise DemoImagesError(_cannot_write(image_dir, exc)) from exc
    except BaseException:
        shutil.rmtree(image_dir, ignore_errors=True)
        raise


class DemoImagesError(RuntimeError):
    """The demo's images cannot be written; nothing was stored."""


def _cannot_write(folder: Path, exc: OSError) -> str:
    return (
        f"Cannot write the demo images to {folder}: {exc.strerror or exc}. "
        "Free some disk space, or set OMR_DATA_DIR to a writable folder."
    )


class _SheetRenderer:
    """Render a job's sheet to its image file, then read it like a scan."""

    def __init__(
        self, template: Template, key: Mapping[str, str], seed: int, batch: NewBatch
    ) -> None:
        self._template = template
        self._key = key
        self._seed = seed
        self._batch = batch

    def __call__(self, job: SheetJob) -> SheetReading:
        # One generator per sheet: the same seed gives the same sheet
        # whichever thread renders it and in whatever order.
        rng = np.random.default_rng([self._seed, job.sequence_no])
        truth = steer_to_key(
            self._template, random_truth(self._template, rng, "demo"), self._key, rng
        )
        data = render_sheet(self._template, truth, rng, "jpg", JPEG_QUALITY)
        job.image_path.write_bytes(data)
        return read_sheet(job.image_path, self._template, self._batch.settings)


def steer_to_key(
    template: Template,
    truth: SheetTruth,
    key: Mapping[str, str],
    rng: np.random.Generator,
) -> SheetTruth:
    """Move single marks onto the key's answer for SHARE_ANSWERED_RIGHT of questions.

    Swaps whole bubbles (kind, darkness, coverage) within a question, so the
    mix of solid, light and blank questions stays as drawn.
    """
    kinds = list(truth.kinds)
    darkness = truth.darkness.copy()
    coverage = truth.coverage.copy()
    start = 0
    for fld in template.fields:
        stop = start + len(fld.bubbles)
        values = [b.value for b in fld.bubbles]
        marked = [i for i in range(start, stop) if kinds[i] in MARKED_KINDS]
        wanted = key.get(fld.label)
        if (
            fld.kind is FieldKind.QUESTION
            and len(marked) == 1
            and wanted in values
            and rng.random() < SHARE_ANSWERED_RIGHT
        ):
            target = start + values.index(wanted)
            _swap(kinds, darkness, coverage, marked[0], target)
        start = stop
    expected = _expected(template, kinds)
    return dataclasses.replace(
        truth,
        kinds=tuple(kinds),
        darkness=darkness,
        coverage=coverage,
        expected=expected,
    )


def _swap(
    kinds: list[str], darkness: np.ndarray, coverage: np.ndarray, i: int, j: int
) -> None:
    kinds[i], kinds[j] = kinds[j], kinds[i]
    darkness[[i, j]] = darkness[[j, i]]
    coverage[[i, j]] = coverage[[j, i]]


def _expected(template: Template, kinds: list[str]) -> dict[str, str]:
    per_field: dict[str, str] = {}
    start = 0
    for fld in template.fields:
        per_field[fld.label] = "".join(
            b.value
            for j, b in enumerate(fld.bubbles)
            if kinds[start + j] in MARKED_KINDS
        )
        start += len(fld.bubbles)
    return {
        column: "".join(per_field[f] for f in template.column_fields(column))
        for column in template.output_columns
    }


def _answer_key(template: Template, rng: np.random.Generator) -> dict[str, str]:
    return {
        fld.label: str(rng.choice([b.value for b in fld.bubbles]))
        for fld in template.fields
        if fld.kind is FieldKind.QUESTION
    }


def _student_name(rng: np.random.Generator) -> str:
    return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"


def _new_image_dir(parent: Path, name: str) -> Path:
    """Create and return a folder ``name`` in ``parent`` that did not exist."""
    parent.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        folder = parent / (name if number == 1 else f"{name}-{number}")
        try:
            # Created and tested at once, so two demos cannot take one folder.
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise AssertionError("unreachable")


# Maximum length, in UTF-8 bytes, of the folder name a batch name gives.
# File systems allow 255, and a number may still be appended.
_MAX_FOLDER_BYTES = 100


def _folder_name(batch_name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in batch_name)
    safe = safe.strip("-")
    while len(safe.encode()) > _MAX_FOLDER_BYTES:
        safe = safe[:-1]
    return safe or "batch"
