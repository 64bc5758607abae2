"""Parse OMRChecker's v1 template.json into a `Template`.

The format: ``pageDimensions`` [w, h] is the canvas; each entry of
``fieldBlocks`` places a grid of fields from its ``origin`` (top-left corner
of the first bubble). Within a field, bubbles advance by ``bubblesGap``
along ``direction`` (y when vertical, x when horizontal); successive fields
advance by ``labelsGap`` along the other axis. Positions are accumulated as
floats and rounded per bubble, as OMRChecker does, so a gap of 28.7 px does
not drift.

Geometric preProcessors (CropPage, CropOnMarkers, FeatureBasedAlignment)
are not run: the engine reads sheets that were aligned before they reached
it. Such a template still loads; the names are kept in
``Template.ignored_preprocessors`` and a warning is logged, because reading
an unaligned photo with it gives wrong answers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from omr_desktop.engine.template import (
    Bubble,
    Field,
    FieldKind,
    Template,
    TemplateError,
    ToneSettings,
)

logger = logging.getLogger(__name__)

FIELD_TYPES: Mapping[str, tuple[tuple[str, ...], str]] = {
    "QTYPE_MCQ4": (("A", "B", "C", "D"), "horizontal"),
    "QTYPE_MCQ5": (("A", "B", "C", "D", "E"), "horizontal"),
    "QTYPE_MCQ4_RTL": (("D", "C", "B", "A"), "horizontal"),
    "QTYPE_MCQ5_RTL": (("E", "D", "C", "B", "A"), "horizontal"),
    "QTYPE_INT": (tuple("0123456789"), "vertical"),
    "QTYPE_INT_FROM_1": (tuple("1234567890"), "vertical"),
    "QTYPE_INT_RTL": (tuple("9876543210"), "vertical"),
    "QTYPE_INT_FROM_1_RTL": (tuple("0987654321"), "vertical"),
}

GEOMETRIC_PREPROCESSORS = frozenset(
    {"CropPage", "CropOnMarkers", "FeatureBasedAlignment"}
)
TONE_PREPROCESSORS = frozenset({"Levels", "GaussianBlur", "MedianBlur"})
_TOP_LEVEL_KEYS = frozenset(
    {
        "pageDimensions",
        "bubbleDimensions",
        "preProcessors",
        "fieldBlocks",
        "customLabels",
        "outputColumns",
        "emptyValue",
        "options",
    }
)
# Two or three dots between the numbers, e.g. "q1..4" or "roll1...9".
_RANGE = re.compile(r"^([^.\d]+)(\d+)\.{2,3}(\d+)$")

# Words that mark a field or custom label as part of the sheet's identity
# rather than an answer: "Roll", "roll1", "Booklet_No", "StudentID",
# "reg_no", "candidate". Matched per word after splitting the name at
# non-letters and lower-to-upper case changes.
IDENTIFIER_WORDS = frozenset(
    {
        "roll",
        "booklet",
        "id",
        "student",
        "registration",
        "reg",
        "candidate",
        "enrolment",
        "enrollment",
        "admission",
        "matric",
    }
)


def looks_like_identifier(name: str) -> bool:
    """Return True when a field or custom label names an identity field.

    The name is split into words at every non-letter and at each lower-to-
    upper case change ("StudentID" gives "student", "id"), and any word in
    `IDENTIFIER_WORDS` makes it an identifier. "q12" and "Medium" are not.
    """
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    words = re.split(r"[^A-Za-z]+", spaced.lower())
    return any(word in IDENTIFIER_WORDS for word in words)


def expand_labels(labels: Sequence[str], block: str) -> list[str]:
    """Expand range labels such as ``q1..4`` into q1, q2, q3, q4."""
    expanded: list[str] = []
    for label in labels:
        if not isinstance(label, str) or not label:
            raise TemplateError(f"block {block!r}: field label {label!r} is not a name")
        if "." not in label:
            expanded.append(label)
            continue
        match = _RANGE.match(label)
        if match is None:
            raise TemplateError(
                f"block {block!r}, field {label!r}: invalid range, expected a form "
                "like 'q1..4'"
            )
        prefix, start, end = match.group(1), int(match.group(2)), int(match.group(3))
        if start >= end:
            raise TemplateError(
                f"block {block!r}, field {label!r}: range start {start} must be "
                f"less than its end {end}"
            )
        expanded.extend(f"{prefix}{i}" for i in range(start, end + 1))
    return expanded


def parse_omrchecker_template(
    data: Mapping[str, Any],
    *,
    identifier_columns: Collection[str] | None = None,
    name: str = "",
) -> Template:
    """Build a `Template` from OMRChecker v1 template.json data.

    Raises:
        TemplateError: A key is missing or unknown, a bubble lies off the
            page, a label repeats, a range or field type is invalid, or a
            custom label refers to a missing field.
    """
    _check_top_level(data)
    page_w, page_h = _pair(data["pageDimensions"], "pageDimensions", "template")
    bubble_size = _pair(data["bubbleDimensions"], "bubbleDimensions", "template")
    empty_value = str(data.get("emptyValue", ""))
    tone, ignored = _parse_preprocessors(data.get("preProcessors", []))
    blocks = data["fieldBlocks"]
    if not isinstance(blocks, Mapping) or not blocks:
        raise TemplateError("template: fieldBlocks must be a non-empty object")

    fields: list[Field] = []
    for block_name, block in blocks.items():
        fields.extend(
            _parse_block(
                str(block_name), block, bubble_size, empty_value, (page_w, page_h)
            )
        )
    _check_unique(fields)
    custom = _parse_custom_labels(data.get("customLabels", {}), fields)
    columns = _output_columns(data.get("outputColumns", []), fields, custom)
    fields = _assign_kinds(fields, custom, identifier_columns, columns)
    if ignored:
        logger.warning(
            "template %s: geometric preProcessors %s are not applied; images must "
            "already be aligned to the template canvas",
            name or "(unnamed)",
            ", ".join(ignored),
        )
    return Template(
        page_width=page_w,
        page_height=page_h,
        fields=tuple(fields),
        custom_labels=custom,
        output_columns=columns,
        empty_value=empty_value,
        tone=tone,
        ignored_preprocessors=ignored,
        name=name,
    )


def _check_top_level(data: Mapping[str, Any]) -> None:
    unknown = sorted(set(data) - _TOP_LEVEL_KEYS)
    if unknown:
        raise TemplateError(f"template: unknown key {unknown[0]!r}")
    for key in ("pageDimensions", "bubbleDimensions", "fieldBlocks"):
        if key not in data:
            raise TemplateError(f"template: missing key {key!r}")


def _pair(value: Any, key: str, where: str) -> tuple[int, int]:
    ok = (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int | float) and v > 0 for v in value)
    )
    if not ok:
        raise TemplateError(
            f"{where}: {key} must be two positive numbers, got {value!r}"
        )
    return int(value[0]), int(value[1])


def _parse_preprocessors(items: Any) -> tuple[ToneSettings, tuple[str, ...]]:
    if not isinstance(items, Sequence):
        raise TemplateError("template: preProcessors must be a list")
    tone: dict[str, Any] = {}
    ignored: list[str] = []
    for item in items:
        proc = item.get("name") if isinstance(item, Mapping) else None
        options = item.get("options", {}) if isinstance(item, Mapping) else {}
        if proc in GEOMETRIC_PREPROCESSORS:
            ignored.append(proc)
        elif proc in TONE_PREPROCESSORS:
            tone.update(_tone_options(proc, options))
        else:
            raise TemplateError(f"template: unknown preProcessor {proc!r}")
    return ToneSettings(**tone), tuple(ignored)


def _tone_options(proc: str, options: Mapping[str, Any]) -> dict[str, Any]:
    if proc == "Levels":
        return {
            "levels_low": float(options.get("low", 0.0)),
            "levels_high": float(options.get("high", 1.0)),
            "levels_gamma": float(options.get("gamma", 1.0)),
        }
    if proc == "GaussianBlur":
        ksize = options.get("kSize", [3, 3])
        return {
            "gaussian_ksize": int(ksize[0]),
            "gaussian_sigma": float(options.get("sigmaX", 0)),
        }
    return {"median_ksize": int(options.get("kSize", 5))}


def _block_values(block: Mapping[str, Any], name: str) -> tuple[tuple[str, ...], str]:
    if "fieldType" in block:
        ftype = block["fieldType"]
        if ftype not in FIELD_TYPES:
            raise TemplateError(f"block {name!r}: unknown fieldType {ftype!r}")
        return FIELD_TYPES[ftype]
    values = block.get("bubbleValues")
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise TemplateError(
            f"block {name!r}: needs a fieldType, or bubbleValues with a direction"
        )
    direction = block.get("direction", "vertical")
    if direction not in ("vertical", "horizontal"):
        raise TemplateError(f"block {name!r}: invalid direction {direction!r}")
    return tuple(str(v) for v in values), direction


def _parse_block(
    name: str,
    block: Any,
    default_size: tuple[int, int],
    default_empty: str,
    page: tuple[int, int],
) -> list[Field]:
    if not isinstance(block, Mapping):
        raise TemplateError(f"block {name!r}: must be an object")
    for key in ("origin", "bubblesGap", "labelsGap", "fieldLabels"):
        if key not in block:
            raise TemplateError(f"block {name!r}: missing key {key!r}")
    values, direction = _block_values(block, name)
    labels = expand_labels(block["fieldLabels"], name)
    size = default_size
    if "bubbleDimensions" in block:
        size = _pair(block["bubbleDimensions"], "bubbleDimensions", f"block {name!r}")
    origin = block["origin"]
    if not (isinstance(origin, Sequence) and len(origin) == 2):
        raise TemplateError(f"block {name!r}: origin must be [x, y], got {origin!r}")
    empty = str(block.get("emptyValue", default_empty))
    grid = _BlockGrid(
        name,
        float(origin[0]),
        float(origin[1]),
        float(block["bubblesGap"]),
        float(block["labelsGap"]),
        direction,
        size,
    )
    fields = [grid.field(i, label, values, empty) for i, label in enumerate(labels)]
    for fld in fields:
        _check_on_page(fld, page)
    return fields


class _BlockGrid:
    """Bubble positions of one block, accumulated in floats as OMRChecker does."""

    def __init__(
        self,
        name: str,
        x0: float,
        y0: float,
        bubbles_gap: float,
        labels_gap: float,
        direction: str,
        size: tuple[int, int],
    ) -> None:
        self.name = name
        self.origin = (x0, y0)
        self.bubbles_gap = bubbles_gap
        self.labels_gap = labels_gap
        self.vertical = direction == "vertical"
        self.size = size

    def field(
        self, index: int, label: str, values: tuple[str, ...], empty: str
    ) -> Field:
        x, y = self.origin
        if self.vertical:
            x += sum(self.labels_gap for _ in range(index))
        else:
            y += sum(self.labels_gap for _ in range(index))
        bubbles = []
        for value in values:
            bubbles.append(Bubble(value, round(x), round(y), *self.size))
            if self.vertical:
                y += self.bubbles_gap
            else:
                x += self.bubbles_gap
        return Field(label, self.name, FieldKind.QUESTION, tuple(bubbles), empty)


def _check_on_page(fld: Field, page: tuple[int, int]) -> None:
    for bubble in fld.bubbles:
        inside = (
            bubble.x >= 0
            and bubble.y >= 0
            and bubble.x + bubble.width <= page[0]
            and bubble.y + bubble.height <= page[1]
        )
        if not inside:
            raise TemplateError(
                f"block {fld.block!r}, field {fld.label!r}: bubble {bubble.value!r} "
                f"at ({bubble.x}, {bubble.y}) size {bubble.width}x{bubble.height} "
                f"lies off the {page[0]}x{page[1]} page"
            )


def _check_unique(fields: Sequence[Field]) -> None:
    seen: dict[str, str] = {}
    for fld in fields:
        if fld.label in seen:
            raise TemplateError(
                f"block {fld.block!r}, field {fld.label!r}: duplicate label, "
                f"already used in block {seen[fld.label]!r}"
            )
        seen[fld.label] = fld.block


def _parse_custom_labels(
    data: Any, fields: Sequence[Field]
) -> dict[str, tuple[str, ...]]:
    if not isinstance(data, Mapping):
        raise TemplateError("template: customLabels must be an object")
    known = {f.label: f.block for f in fields}
    used: dict[str, str] = {}
    custom: dict[str, tuple[str, ...]] = {}
    for label, parts in data.items():
        if not isinstance(parts, Sequence) or isinstance(parts, str):
            raise TemplateError(f"custom label {label!r}: must list field labels")
        members = tuple(expand_labels(list(parts), f"customLabels.{label}"))
        for member in members:
            if member not in known:
                raise TemplateError(
                    f"custom label {label!r}, field {member!r}: no such field"
                )
            if member in used:
                raise TemplateError(
                    f"block {known[member]!r}, field {member!r}: used by custom "
                    f"labels {used[member]!r} and {label!r}"
                )
            used[member] = label
        if label in known and (label,) != members:
            raise TemplateError(
                f"block {known[label]!r}, field {label!r}: a custom label has the "
                "same name as a field it does not consist of"
            )
        custom[str(label)] = members
    return custom


def _natural_key(name: str) -> tuple[str, int, str]:
    match = re.match(r"^(\D*)(\d*)", name)
    assert match is not None  # the pattern matches every string
    digits = match.group(2)
    return match.group(1), int(digits) if digits else 0, name


def _output_columns(
    requested: Any, fields: Sequence[Field], custom: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    consumed = {member for members in custom.values() for member in members}
    available = [f.label for f in fields if f.label not in consumed] + list(custom)
    if not requested:
        return tuple(sorted(available, key=_natural_key))
    if not isinstance(requested, Sequence) or isinstance(requested, str):
        raise TemplateError("template: outputColumns must be a list")
    columns = expand_labels(list(requested), "outputColumns")
    for column in columns:
        if column not in available:
            raise TemplateError(f"outputColumns, field {column!r}: no such column")
    return tuple(columns)


def _assign_kinds(
    fields: Sequence[Field],
    custom: Mapping[str, tuple[str, ...]],
    identifier_columns: Collection[str] | None,
    columns: Sequence[str],
) -> list[Field]:
    owner = {member: label for label, members in custom.items() for member in members}
    if identifier_columns is not None:
        unknown = sorted(set(identifier_columns) - set(columns))
        if unknown:
            raise TemplateError(f"identifier column {unknown[0]!r}: no such column")
    result = []
    for fld in fields:
        column = owner.get(fld.label, fld.label)
        if identifier_columns is not None:
            is_id = column in identifier_columns
        else:
            is_id = looks_like_identifier(column)
        kind = FieldKind.IDENTIFIER if is_id else FieldKind.QUESTION
        result.append(Field(fld.label, fld.block, kind, fld.bubbles, fld.empty_value))
    return result
