"""Read one sheet: load the image, measure the bubbles, decide the answers."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from omr_desktop.engine.decide import SheetReading, decide
from omr_desktop.engine.image import load_sheet_for_measuring
from omr_desktop.engine.measure import measure_fills
from omr_desktop.engine.profile import ProfileSettings, measurement_hash
from omr_desktop.engine.template import Template

logger = logging.getLogger(__name__)


def read_sheet(
    path: Path, template: Template, settings: ProfileSettings
) -> SheetReading:
    """Read an aligned sheet image with a profile's settings.

    The reading carries the `measurement_hash` of ``settings`` so that its
    fills can later be re-decided only under the same measurement. Safe to
    call from many threads at once: decoding, resizing and the numpy work
    release the GIL, and two threads that race to fill a per-template cache
    at most build the same entry twice.

    The image is measured at the resolution it was decoded at. That is half
    the page for templates with bubbles of 24 px or more, because enlarging
    it first would add no information.

    Raises:
        SheetImageError: The image is missing, unreadable, corrupt or too
            small (see `omr_desktop.engine.image.load_sheet_image`).
    """
    start = time.perf_counter()
    image = load_sheet_for_measuring(path, template)
    loaded = time.perf_counter()
    reading = read_loaded_sheet(image, template, settings)
    logger.debug(
        "read %s: load %.1f ms, measure and decide %.1f ms",
        path,
        (loaded - start) * 1e3,
        (time.perf_counter() - loaded) * 1e3,
    )
    return reading


def read_loaded_sheet(
    image: npt.NDArray[np.uint8], template: Template, settings: ProfileSettings
) -> SheetReading:
    """Measure and decide a page that `load_sheet_for_measuring` returned.

    `read_sheet` loads the page and calls this. Callers that read many sheets can
    load several pages first and then read them one after another, which
    keeps the decoder's and numpy's working data in the CPU caches.

    Raises:
        ValueError: ``image`` has neither the page's shape nor half of it.
    """
    fills = measure_fills(image, template, settings.measurement)
    reading = decide(fills, template, settings.decision)
    return dataclasses.replace(reading, measurement_hash=measurement_hash(settings))


def redecide(
    reading: SheetReading, template: Template, settings: ProfileSettings
) -> SheetReading:
    """Decide a stored reading again under another profile, without the image.

    Raises:
        MeasurementMismatchError: The profile measures differently from the
            settings that produced the stored fills, so the images must be
            read again.
    """
    wanted = measurement_hash(settings)
    if reading.measurement_hash and reading.measurement_hash != wanted:
        raise MeasurementMismatchError(reading.measurement_hash, wanted)
    result = decide(reading.fills, template, settings.decision)
    return dataclasses.replace(result, measurement_hash=reading.measurement_hash)


class MeasurementMismatchError(ValueError):
    """Stored fills were measured with other settings than the profile's."""

    def __init__(self, stored: str, wanted: str) -> None:
        super().__init__(
            f"stored fills were measured with settings {stored}, but the profile "
            f"measures with {wanted}; read the sheet images again instead of "
            "re-deciding"
        )
        self.stored = stored
        self.wanted = wanted
