"""Detection profiles: named, validated settings for measuring and deciding.

A profile is stored as JSON (``ProfileSettings.to_dict``) and checked by
`parse_profile_settings`. Its two parts differ in what a change costs:

- `MeasurementSettings` need the image: changing them means decoding every
  sheet again. `measurement_hash` identifies them, and stored fills carry
  that hash.
- `DecisionSettings` work on stored fills alone, so a change is re-decided
  without images (`omr_desktop.engine.decide.decide`).

All fills and thresholds are fractions of the paper level: 0 is paper, 1 is
solid ink. A decision threshold applies to a bubble's fill minus its
question's background (the faintest bubble of the question, see
`omr_desktop.engine.decide`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

MultiMarkPolicy = Literal["darkest", "star", "all"]
MULTI_MARK_POLICIES: tuple[str, ...] = ("darkest", "star", "all")


class ProfileError(ValueError):
    """Invalid profile settings; the message names the key."""


@dataclass(frozen=True)
class MeasurementSettings:
    """How a bubble's fill is measured from the image.

    Attributes:
        levels_low: Tone curve black point, fraction of 255; darker greys
            become 0 before measuring.
        levels_high: Tone curve white point, fraction of 255.
        levels_gamma: Tone curve gamma; above 1 lightens mid-greys.
        blur_ksize: Gaussian blur kernel, px (odd), 0 for none.
        median_ksize: Median blur kernel, px (odd), 0 for none.
        sample_inset: Diameter of the sampled ellipse as a fraction of the
            bubble rectangle; the printed outline lies outside it.
        fill_quantile: A bubble's fill is the darkness that this fraction
            of its sampled pixels reaches. At 0.6, a mark must cover 60 % of
            the sample to count fully, so printed letters, digits and stray
            strokes (10-40 % of the sample) count little.
        paper_window: Width of the window over which the local paper level
            is estimated, in bubble sizes; shading wider than this is
            followed, bubbles and print narrower than this are ignored.
        align_search: Largest shift tried per block to put the template's
            boxes on the marks, in bubble sizes; 0 turns the search off.
    """

    levels_low: float = 0.0
    levels_high: float = 1.0
    levels_gamma: float = 1.0
    blur_ksize: int = 0
    median_ksize: int = 0
    sample_inset: float = 0.7
    fill_quantile: float = 0.6
    paper_window: float = 4.0
    align_search: float = 0.5


@dataclass(frozen=True)
class DecisionSettings:
    """How measured fills become answers.

    Attributes:
        min_fill: A bubble is marked when its fill above the question's
            background reaches this.
        min_jump: Minimum gap between the faintest marked and the darkest
            unmarked bubble of a question; confidence falls to 0 at it.
        multi_mark_gap: With several marks, the darkest wins when it exceeds
            the second by this much; otherwise the multi-mark is unresolved.
        erased_low: Lower edge of the erasure band; an unmarked bubble with
            a relative fill in [erased_low, erased_high] is erasure residue.
        erased_high: Upper edge of the erasure band. Unmarked fills above it
            are faint marks (reason ``light_mark``).
        uncertain_below: Width of the band under ``min_fill`` where an
            unmarked bubble's confidence falls from 1 to 0.
        uncertain_above: Width of the band over ``min_fill`` where a marked
            bubble's confidence falls from 1 to 0; also scales the jump and
            multi-mark gap distances.
        solid_fill: Marks fainter than this are reported as ``light_mark``.
        review_threshold: Answers with a confidence below this need review.
        multi_mark_policy: ``answer_corrected`` for several marks: "darkest"
            (the darkest if it wins by ``multi_mark_gap``, else ``*``),
            "star" (always ``*``) or "all" (the marked values joined).
        flag_blank_blocks: Send every question of an entirely blank block
            to review (a skipped page section or a failed scan).
    """

    min_fill: float = 0.45
    min_jump: float = 0.2
    multi_mark_gap: float = 0.25
    erased_low: float = 0.08
    erased_high: float = 0.2
    uncertain_below: float = 0.25
    uncertain_above: float = 0.15
    solid_fill: float = 0.6
    review_threshold: float = 0.9
    multi_mark_policy: MultiMarkPolicy = "darkest"
    flag_blank_blocks: bool = True


@dataclass(frozen=True)
class ProfileSettings:
    """A profile's complete settings."""

    measurement: MeasurementSettings = MeasurementSettings()
    decision: DecisionSettings = DecisionSettings()

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON data that `parse_profile_settings` reads."""
        return {
            "measurement": dataclasses.asdict(self.measurement),
            "decision": dataclasses.asdict(self.decision),
        }


@dataclass(frozen=True)
class BuiltinProfile:
    """A profile shipped with the product."""

    id: int
    name: str
    description: str
    settings: ProfileSettings


# Allowed ranges, inclusive. Fills are fractions of the paper level, so 0-1.
_MEASUREMENT_RANGES: Mapping[str, tuple[float, float]] = {
    "levels_low": (0.0, 0.95),
    "levels_high": (0.05, 1.0),
    "levels_gamma": (0.1, 10.0),
    "blur_ksize": (0, 31),
    "median_ksize": (0, 31),
    "sample_inset": (0.2, 1.0),
    "fill_quantile": (0.05, 0.95),
    "paper_window": (2.0, 20.0),
    "align_search": (0.0, 1.0),
}
_DECISION_RANGES: Mapping[str, tuple[float, float]] = {
    "min_fill": (0.02, 0.98),
    "min_jump": (0.0, 0.95),
    "multi_mark_gap": (0.0, 1.0),
    "erased_low": (0.0, 0.95),
    "erased_high": (0.0, 0.95),
    "uncertain_below": (0.001, 1.0),
    "uncertain_above": (0.001, 1.0),
    "solid_fill": (0.02, 1.0),
    "review_threshold": (0.0, 1.0),
}


def parse_profile_settings(data: Mapping[str, Any]) -> ProfileSettings:
    """Validate profile JSON and return its settings.

    ``data`` has the form ``{"measurement": {...}, "decision": {...}}``; a
    missing part or key takes the Default profile's value.

    Raises:
        ProfileError: A key is unknown, a value has the wrong type or lies
            out of range, or two settings contradict each other; the
            message names the key.
    """
    if not isinstance(data, Mapping):
        raise ProfileError("profile settings must be a JSON object")
    unknown = sorted(set(data) - {"measurement", "decision"})
    if unknown:
        raise ProfileError(
            f"unknown profile key {unknown[0]!r}; expected 'measurement' or 'decision'"
        )
    measurement = _parse_part(
        data.get("measurement", {}), MeasurementSettings, _MEASUREMENT_RANGES
    )
    decision = _parse_part(data.get("decision", {}), DecisionSettings, _DECISION_RANGES)
    _check_measurement(measurement)
    _check_decision(decision)
    return ProfileSettings(measurement, decision)


def _parse_part(
    part: Any, cls: type[Any], ranges: Mapping[str, tuple[float, float]]
) -> Any:
    section = cls.__name__.removesuffix("Settings").lower()
    if not isinstance(part, Mapping):
        raise ProfileError(f"profile key {section!r} must be a JSON object")
    defaults = cls()
    values: dict[str, Any] = {}
    for key, value in part.items():
        if key not in ranges and key not in ("multi_mark_policy", "flag_blank_blocks"):
            raise ProfileError(f"unknown profile key '{section}.{key}'")
        values[key] = _check_value(
            f"{section}.{key}", value, getattr(defaults, key), ranges
        )
    return dataclasses.replace(defaults, **values)


def _check_value(
    name: str, value: Any, default: Any, ranges: Mapping[str, tuple[float, float]]
) -> Any:
    key = name.split(".", 1)[1]
    if key == "multi_mark_policy":
        if value not in MULTI_MARK_POLICIES:
            raise ProfileError(
                f"profile key {name!r}: {value!r} is not one of {MULTI_MARK_POLICIES}"
            )
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ProfileError(f"profile key {name!r}: expected true or false")
        return value
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, int) and not (numeric and float(value).is_integer()):
        raise ProfileError(f"profile key {name!r}: expected an integer, got {value!r}")
    if not numeric:
        raise ProfileError(f"profile key {name!r}: expected a number, got {value!r}")
    low, high = ranges[key]
    if not low <= value <= high:
        raise ProfileError(
            f"profile key {name!r}: {value} is out of range [{low}, {high}]"
        )
    return int(value) if isinstance(default, int) else float(value)


def _check_measurement(m: MeasurementSettings) -> None:
    if m.levels_low >= m.levels_high:
        raise ProfileError(
            "profile key 'measurement.levels_low' must be below "
            "'measurement.levels_high'"
        )
    for key in ("blur_ksize", "median_ksize"):
        ksize = getattr(m, key)
        if ksize not in (0, 1) and ksize % 2 == 0:
            raise ProfileError(
                f"profile key 'measurement.{key}': {ksize} must be 0 or an odd number"
            )


def _check_decision(d: DecisionSettings) -> None:
    if d.erased_low > d.erased_high:
        raise ProfileError(
            "profile key 'decision.erased_low' must not exceed 'decision.erased_high'"
        )
    if d.erased_high >= d.min_fill:
        raise ProfileError(
            "profile key 'decision.erased_high' must be below 'decision.min_fill'"
        )


# Version of the measuring code. Bump it with any change that moves the
# fills measured under unchanged settings, so that fills stored before the
# change are not re-decided as if the current code had measured them.
# Version 2 estimates the paper level on a page reduced to bubbles of
# about 3.5 px, where version 1 used 7 px.
MEASUREMENT_VERSION = 2


def measurement_hash(settings: ProfileSettings | MeasurementSettings) -> str:
    """Return a stable hex digest of the measurement settings alone.

    Equal measurement settings give equal hashes across processes and
    versions of Python, because the digest is SHA-256 over sorted JSON.
    The JSON includes `MEASUREMENT_VERSION`.
    """
    measurement = (
        settings.measurement if isinstance(settings, ProfileSettings) else settings
    )
    return _hash_measurement(measurement)


@functools.lru_cache(maxsize=64)
def _hash_measurement(measurement: MeasurementSettings) -> str:
    fields = dataclasses.asdict(measurement)
    fields["measurement_version"] = MEASUREMENT_VERSION
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


_SHARED_MEASUREMENT = MeasurementSettings()

BUILTIN_PROFILES: Mapping[int, BuiltinProfile] = {
    1: BuiltinProfile(
        1,
        "Default",
        "Reads solid marks; light marks and near-threshold bubbles go to review.",
        ProfileSettings(_SHARED_MEASUREMENT, DecisionSettings()),
    ),
    2: BuiltinProfile(
        2,
        "Sensitive",
        "Also reads light pencil marks (about 25-40 % darkness); printed "
        "letters, erasure residue and shading stay blank.",
        ProfileSettings(
            _SHARED_MEASUREMENT,
            # Erasure residue measures up to about 0.20 and light marks of
            # darkness 0.25 from about 0.23, so the threshold sits between.
            DecisionSettings(
                min_fill=0.215,
                min_jump=0.05,
                multi_mark_gap=0.2,
                erased_low=0.06,
                erased_high=0.2,
                uncertain_below=0.04,
                uncertain_above=0.08,
                solid_fill=0.6,
                review_threshold=0.5,
            ),
        ),
    ),
    3: BuiltinProfile(
        3,
        "Strict",
        "Accepts only solid marks; light marks, erasures and close calls go to review.",
        ProfileSettings(
            _SHARED_MEASUREMENT,
            DecisionSettings(
                min_fill=0.55,
                min_jump=0.3,
                multi_mark_gap=0.35,
                erased_low=0.06,
                erased_high=0.15,
                uncertain_below=0.45,
                uncertain_above=0.15,
                solid_fill=0.65,
                review_threshold=0.95,
                multi_mark_policy="star",
            ),
        ),
    ),
}
