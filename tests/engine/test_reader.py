"""read_sheet: the whole path from file to answers, on many threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from omr_desktop.engine.profile import BUILTIN_PROFILES, measurement_hash
from omr_desktop.engine.reader import read_sheet
from omr_desktop.engine.synthetic import demo_template, random_truth, render_sheet

DEFAULT = BUILTIN_PROFILES[1].settings


def _write_sheets(folder: Path, count: int) -> tuple[list[Path], list[dict[str, str]]]:
    template = demo_template()
    rng = np.random.default_rng(77)
    paths, truths = [], []
    for i in range(count):
        truth = random_truth(template, rng, "clean")
        path = folder / f"sheet{i}.png"  # JPEG bytes under a .png name
        path.write_bytes(render_sheet(template, truth, rng, fmt="jpg"))
        paths.append(path)
        truths.append(dict(truth.expected))
    return paths, truths


def test_read_sheet_records_measurement_hash(tmp_path: Path) -> None:
    paths, truths = _write_sheets(tmp_path, 1)
    reading = read_sheet(paths[0], demo_template(), DEFAULT)
    assert reading.measurement_hash == measurement_hash(DEFAULT)
    assert reading.output_row() == truths[0]


def test_threads_read_like_one_thread(tmp_path: Path) -> None:
    paths, truths = _write_sheets(tmp_path, 12)
    # A fresh template, so the first reads race to build its caches.
    template = demo_template()
    with ThreadPoolExecutor(6) as pool:
        readings = list(pool.map(lambda p: read_sheet(p, template, DEFAULT), paths * 3))
    for i, reading in enumerate(readings):
        assert reading.output_row() == truths[i % len(paths)], paths[i % len(paths)]
    for i in range(len(paths)):
        assert np.array_equal(readings[i].fills, readings[i + len(paths)].fills)
