"""Time the engine on demo sheets: decode, measure, decide, and 2 threads.

Usage: ``python benchmarks/engine_speed.py [--sheets N] [--threads T]
[--rounds R] [--profile ID]``. Renders N demo sheets (150 questions x 5
options, JPEG) into a temporary folder, then reports the median and best
per-sheet milliseconds of each step, and sheets per second on T threads
for three passes over all sheets:

- decode only, as `read_sheet` decodes (`load_sheet_for_measuring`);
- `read_sheet`;
- `read_sheet` then the COPY encoding, as the reprocess pipeline's
  detection threads run it;
- the same with the numpy path in place of the compiled measuring
  kernels (`omr_desktop.engine.kernels`), when the install has them.

The threaded passes alternate R times and each keeps its fastest round,
because other processes on the machine only ever slow a round down. The
ratios to the decode pass come from the same run, so they stay comparable
when the machine's load changes between runs. Each pass also reports the
CPU time of this process (all threads) per sheet, which other processes
change much less than the wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from omr_desktop.engine import (
    BUILTIN_PROFILES,
    SheetReading,
    decide,
    kernels,
    measure_fills,
    read_sheet,
)
from omr_desktop.engine.image import load_sheet_for_measuring, load_sheet_image
from omr_desktop.engine.profile import ProfileSettings
from omr_desktop.engine.synthetic import demo_template, random_truth, render_sheet
from omr_desktop.engine.template import Template
from omr_desktop.pipeline.copy_rows import encode_answer_columns, encode_sheet


def _median_ms(
    action: Callable[[Path], object], paths: list[Path]
) -> tuple[float, float]:
    """Return the median and the minimum milliseconds of one call per sheet."""
    times = []
    for path in paths:
        start = time.perf_counter()
        action(path)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), 1e3 * min(times)


def main() -> int:
    """Render the sheets, time each step and print the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sheets", type=int, default=200, help="sheets to render")
    parser.add_argument("--threads", type=int, default=2, help="reader threads")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds of the threaded passes"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=2,
        choices=sorted(BUILTIN_PROFILES),
        help="built-in profile id (default: %(default)s, Sensitive, as "
        "benchmarks/reprocess.py reprocesses with)",
    )
    args = parser.parse_args()
    template = demo_template()
    profile = BUILTIN_PROFILES[args.profile]
    settings = profile.settings
    print(f"profile {profile.id} ({profile.name}), {args.sheets} sheets")
    rng = np.random.default_rng(99)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        start = time.perf_counter()
        for i in range(args.sheets):
            data = render_sheet(template, random_truth(template, rng, "demo"), rng)
            path = Path(folder) / f"sheet{i:05d}.jpg"
            path.write_bytes(data)
            paths.append(path)
        render_s = time.perf_counter() - start
        _report(template, settings, paths, args.threads, render_s)
        _report_threads(template, settings, paths, args.threads, args.rounds)
    return 0


def _report(
    template: Template,
    settings: ProfileSettings,
    paths: list[Path],
    threads: int,
    render_s: float,
) -> None:
    image = load_sheet_image(paths[0], template)
    half = load_sheet_for_measuring(paths[0], template)
    fills = measure_fills(half, template, settings.measurement)
    flags = cv2.IMREAD_REDUCED_GRAYSCALE_2
    reading = read_sheet(paths[0], template, settings)
    rows = {
        "render + encode (1 thread)": (1e3 * render_s / len(paths), float("nan")),
        "bare decode, reduced": _median_ms(
            lambda p: cv2.imdecode(np.fromfile(p, np.uint8), flags), paths
        ),
        "load_sheet_image (full page)": _median_ms(
            lambda p: load_sheet_image(p, template), paths
        ),
        "load_sheet_for_measuring": _median_ms(
            lambda p: load_sheet_for_measuring(p, template), paths
        ),
        "measure_fills (full page)": _median_ms(
            lambda p: measure_fills(image, template, settings.measurement), paths
        ),
        "measure_fills (half page)": _median_ms(
            lambda p: measure_fills(half, template, settings.measurement), paths
        ),
        "measure_fills (half, numpy)": _median_ms(
            lambda p: _numpy_measure(half, template, settings), paths
        ),
        "decide": _median_ms(
            lambda p: decide(fills, template, settings.decision), paths
        ),
        "read_sheet": _median_ms(lambda p: read_sheet(p, template, settings), paths),
        "encode_answer_columns + encode_sheet": _median_ms(
            lambda p: _encode(reading), paths
        ),
    }
    print(f"{'step':30s} {'median':>7s} {'best':>7s} ms per sheet")
    for name, (median, best) in rows.items():
        best_text = "-" if math.isnan(best) else f"{best:.2f}"
        print(f"{name:30s} {median:7.2f} {best_text:>7s}")


def _numpy_measure(
    image: np.ndarray, template: Template, settings: ProfileSettings
) -> object:
    """Measure with the numpy path, whether or not the kernels are compiled."""
    with kernels.numpy_path():
        return measure_fills(image, template, settings.measurement)


def _encode(reading: SheetReading) -> tuple[bytes, bytes]:
    return encode_answer_columns(1, reading.columns), encode_sheet(1, reading)


def _report_threads(
    template: Template,
    settings: ProfileSettings,
    paths: list[Path],
    threads: int,
    rounds: int,
) -> None:
    passes: dict[str, Callable[[Path], object]] = {
        "decode only": lambda p: load_sheet_for_measuring(p, template),
        "read_sheet": lambda p: read_sheet(p, template, settings),
        "read_sheet + encode": lambda p: _encode(read_sheet(p, template, settings)),
    }
    if kernels.compiled is not None:
        passes["read_sheet + encode, numpy"] = passes["read_sheet + encode"]
    best_wall = dict.fromkeys(passes, float("inf"))
    best_cpu = dict.fromkeys(passes, float("inf"))
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(rounds):
            for name, action in passes.items():
                on_numpy = name.endswith("numpy")
                with kernels.numpy_path() if on_numpy else contextlib.nullcontext():
                    wall, cpu = time.perf_counter(), time.process_time()
                    list(pool.map(action, paths))
                    wall = time.perf_counter() - wall
                    cpu = time.process_time() - cpu
                best_wall[name] = min(best_wall[name], wall)
                best_cpu[name] = min(best_cpu[name], cpu)
    for name in passes:
        label = f"{name}, {threads} threads"
        wall_ratio = best_wall[name] / best_wall["decode only"]
        cpu_ratio = best_cpu[name] / best_cpu["decode only"]
        cpu_ms = 1e3 * best_cpu[name] / len(paths)
        print(
            f"{label:34s} {len(paths) / best_wall[name]:6.1f} sheets/s "
            f"({wall_ratio:.2f}x decode only), CPU {cpu_ms:5.2f} ms per sheet "
            f"({cpu_ratio:.2f}x)"
        )


if __name__ == "__main__":
    sys.exit(main())
