"""Create a batch from real aligned scans: files, answer key and roster."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import psycopg

from omr_desktop.engine import BUILTIN_PROFILES, Template, load_template
from omr_desktop.pipeline.batch_load import (
    LoadResult,
    NewBatch,
    ProgressCallback,
    SheetJob,
    load_batch,
)

# Extensions taken as sheet images. Files are decoded by content, so a .png
# that contains a JPEG still reads. Other files in the folder are ignored.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})

IMPORT_PROFILE_ID = 1


class ImportInputError(ValueError):
    """An import argument or input file is invalid; the message names it."""


def import_batch(
    conn: psycopg.Connection,
    template_path: Path,
    images_dir: Path,
    batch_name: str,
    *,
    key_path: Path | None = None,
    points: tuple[Decimal, Decimal, Decimal] = (Decimal(1), Decimal(0), Decimal(0)),
    roster_path: Path | None = None,
    workers: int = 2,
    progress: ProgressCallback | None = None,
) -> LoadResult:
    """Read every image in ``images_dir`` with Default and store them as a batch.

    Raises:
        ImportInputError: a missing folder, no images, or an invalid key or
            roster file.
        omr_desktop.engine.TemplateError: the template is invalid.
    """
    template = load_template(template_path)
    images = find_images(images_dir)
    key = read_answer_key(key_path, template) if key_path else None
    roster = read_roster(roster_path) if roster_path else None
    if roster is not None and not template.identifier_columns:
        raise ImportInputError(
            f"--roster needs a roll-number field, but {template_path} has no "
            "identifier field. Import without --roster; students are then "
            "named after their files."
        )
    batch = NewBatch(
        name=batch_name,
        template=template,
        template_name=template_path.resolve().parent.name or template_path.stem,
        profile_id=IMPORT_PROFILE_ID,
        settings=BUILTIN_PROFILES[IMPORT_PROFILE_ID].settings,
        key=key,
        points=points,
        roster=roster,
    )
    jobs = [
        SheetJob(n, path.resolve(), path.stem, path.stem)
        for n, path in enumerate(images, start=1)
    ]
    with ThreadPoolExecutor(workers, thread_name_prefix="import") as executor:
        return load_batch(conn, batch, jobs, executor, workers, progress)


def find_images(folder: Path) -> list[Path]:
    """Return the image files of ``folder`` in natural name order (2 before 10)."""
    if not folder.is_dir():
        raise ImportInputError(f"The images folder {folder} does not exist.")
    images = [
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not images:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ImportInputError(
            f"{folder} holds no sheet images (looked for {suffixes})."
        )
    return sorted(images, key=_natural_key)


def _natural_key(path: Path) -> list[object]:
    return [
        int(part) if part.isdigit() else part.lower()
        for part in re.split(r"(\d+)", path.name)
    ]


def read_answer_key(path: Path, template: Template) -> dict[str, list[str]]:
    """Read an answer key of ``question,answer`` lines.

    Several accepted answers are written in one quoted cell: ``q3,"B,C"``
    accepts B or C, and ``q4,"A,AB"`` accepts A or the double mark AB.
    Question names match the template's columns regardless of case.

    Raises:
        ImportInputError: naming the file, line and value at fault.
    """
    columns = {c.lower(): c for c in template.question_columns}
    key: dict[str, list[str]] = {}
    for line_no, row in _csv_rows(path):
        if len(row) != 2:
            raise ImportInputError(
                f"{path}, line {line_no}: expected 'question,answer', got {row!r}."
            )
        question = columns.get(row[0].strip().lower())
        if question is None:
            raise ImportInputError(
                f"{path}, line {line_no}: {row[0]!r} is not a question of the "
                f"template (its questions: {_sample(template.question_columns)})."
            )
        key[question] = _accepted(path, line_no, row[1])
    if not key:
        raise ImportInputError(f"The answer key {path} has no questions.")
    return key


def _accepted(path: Path, line_no: int, cell: str) -> list[str]:
    if cell.strip().startswith("["):
        raise ImportInputError(
            f"{path}, line {line_no}: weighted answers ({cell.strip()!r}) are not "
            'supported; list the accepted answers instead, such as "B,C".'
        )
    answers = [a.strip().upper() for a in cell.split(",") if a.strip()]
    if not answers:
        raise ImportInputError(f"{path}, line {line_no}: the answer is empty.")
    return answers


def read_roster(path: Path) -> dict[str, str]:
    """Read ``roll number,name`` lines into roll number to name.

    Raises:
        ImportInputError: a line without two cells, or a roll number twice.
    """
    roster: dict[str, str] = {}
    for line_no, row in _csv_rows(path):
        if len(row) < 2 or not row[0].strip():
            raise ImportInputError(
                f"{path}, line {line_no}: expected 'roll number,name', got {row!r}."
            )
        roll, name = row[0].strip(), row[1].strip()
        if roll in roster:
            raise ImportInputError(
                f"{path}, line {line_no}: roll number {roll!r} appears twice."
            )
        roster[roll] = name
    return roster


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return [
                (n, row)
                for n, row in enumerate(csv.reader(handle), start=1)
                if any(cell.strip() for cell in row)
            ]
    except OSError as exc:
        raise ImportInputError(f"Cannot read {path}: {exc.strerror}.") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ImportInputError(f"{path} is not a UTF-8 CSV file: {exc}.") from exc


def _sample(values: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(values[:limit])
    return shown + (", ..." if len(values) > limit else "")
