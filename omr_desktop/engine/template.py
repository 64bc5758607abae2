"""Sheet templates: where each bubble sits and which value it marks.

A template describes one sheet layout in a canvas of ``page_width`` x
``page_height`` pixels. Every image is resized to that canvas before it is
read, so bubble rectangles are given in canvas pixels with their top-left
corner at ``(x, y)``, origin at the top-left of the page, y growing down.

`load_template` reads OMRChecker's v1 ``template.json`` format (see
`omr_desktop.engine.template_format`); `Template.to_dict` and
`Template.from_dict` store a parsed template as plain JSON.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TemplateError(ValueError):
    """A template that cannot be used; the message names the block and field."""


class FieldKind(enum.Enum):
    """Whether a field is a question to score or part of the sheet's identity."""

    QUESTION = "question"
    IDENTIFIER = "identifier"


@dataclass(frozen=True)
class Bubble:
    """One bubble rectangle in canvas pixels, top-left corner at (x, y)."""

    value: str
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Field:
    """One field: a question or one identifier digit, with its bubbles in order."""

    label: str
    block: str
    kind: FieldKind
    bubbles: tuple[Bubble, ...]
    empty_value: str = ""


@dataclass(frozen=True)
class ToneSettings:
    """Tone preprocessing requested by a template's preProcessors.

    ``levels_low``, ``levels_high`` and ``levels_gamma`` are OMRChecker's
    ``Levels`` options (fractions of 255); a kernel size of 0 means no blur.
    """

    levels_low: float = 0.0
    levels_high: float = 1.0
    levels_gamma: float = 1.0
    gaussian_ksize: int = 0
    gaussian_sigma: float = 0.0
    median_ksize: int = 0

    @property
    def is_identity(self) -> bool:
        """True when the template requests no tone change at all."""
        return self == ToneSettings()


@dataclass(frozen=True)
class Template:
    """A parsed sheet layout.

    Attributes:
        page_width: Width of the template canvas, px.
        page_height: Height of the template canvas, px.
        fields: Every field in template order (blocks in file order, then
            labels in order); bubble fills are measured in this order.
        custom_labels: Output name to the fields it joins, in join order.
        output_columns: Output names in the order of OMRChecker's results CSV;
            a custom label replaces its component fields.
        empty_value: Template-level value of an unmarked field.
        tone: Tone preprocessing from the template's preProcessors.
        ignored_preprocessors: Names of geometric preProcessors (CropPage,
            CropOnMarkers, FeatureBasedAlignment) that were not applied,
            because the engine reads sheets that are already aligned.
        name: Free text, for logs and the user interface.
    """

    page_width: int
    page_height: int
    fields: tuple[Field, ...]
    custom_labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    output_columns: tuple[str, ...] = ()
    empty_value: str = ""
    tone: ToneSettings = field(default_factory=ToneSettings)
    ignored_preprocessors: tuple[str, ...] = ()
    name: str = ""

    def __hash__(self) -> int:
        return hash((self.page_width, self.page_height, self.fields, self.name))

    def __getstate__(self) -> dict[str, Any]:
        # Engine modules cache arrays on the template under "_" names (the
        # measuring grids, a rendered base page of 4 MB); a pickled copy
        # sent to another process rebuilds them there instead.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    @property
    def n_bubbles(self) -> int:
        """Number of bubbles over all fields."""
        return sum(len(f.bubbles) for f in self.fields)

    def iter_bubbles(self) -> Iterator[tuple[Field, Bubble]]:
        """Yield (field, bubble) in measurement order."""
        for fld in self.fields:
            for bubble in fld.bubbles:
                yield fld, bubble

    @functools.cached_property
    def field_positions(self) -> Mapping[str, int]:
        """Field label to its index in ``fields``."""
        return {fld.label: i for i, fld in enumerate(self.fields)}

    def field_by_label(self, label: str) -> Field:
        """Return the field called ``label``; raises KeyError if there is none."""
        return self.fields[self.field_positions[label]]

    def column_fields(self, column: str) -> tuple[str, ...]:
        """Return the field labels that make up one output column."""
        return self.custom_labels.get(column, (column,))

    def column_kind(self, column: str) -> FieldKind:
        """Return the kind of an output column (that of its first field)."""
        return self.field_by_label(self.column_fields(column)[0]).kind

    @functools.cached_property
    def question_columns(self) -> tuple[str, ...]:
        """Output columns that are questions, in output order."""
        return tuple(
            c for c in self.output_columns if self.column_kind(c) is FieldKind.QUESTION
        )

    @functools.cached_property
    def identifier_columns(self) -> tuple[str, ...]:
        """Output columns that are identifiers, in output order."""
        return tuple(
            c
            for c in self.output_columns
            if self.column_kind(c) is FieldKind.IDENTIFIER
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the template as plain JSON data (for a JSONB column)."""
        return {
            "format": "omr-desktop-template/1",
            "name": self.name,
            "page_width": self.page_width,
            "page_height": self.page_height,
            "empty_value": self.empty_value,
            "custom_labels": {k: list(v) for k, v in self.custom_labels.items()},
            "output_columns": list(self.output_columns),
            "tone": vars(self.tone).copy(),
            "ignored_preprocessors": list(self.ignored_preprocessors),
            "fields": [_field_to_dict(f) for f in self.fields],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Template:
        """Rebuild a template stored by `to_dict`; raises TemplateError."""
        if data.get("format") != "omr-desktop-template/1":
            raise TemplateError(
                f"not a stored template: format is {data.get('format')!r}, "
                "expected 'omr-desktop-template/1'"
            )
        try:
            return _template_from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise TemplateError(f"invalid stored template: {exc!r}") from exc


def _field_to_dict(fld: Field) -> dict[str, Any]:
    return {
        "label": fld.label,
        "block": fld.block,
        "kind": fld.kind.value,
        "empty_value": fld.empty_value,
        "bubbles": [[b.value, b.x, b.y, b.width, b.height] for b in fld.bubbles],
    }


def _field_from_dict(data: Mapping[str, Any]) -> Field:
    bubbles = tuple(
        Bubble(str(v), int(x), int(y), int(w), int(h))
        for v, x, y, w, h in data["bubbles"]
    )
    # The template parser never makes such a field, and measuring assumes
    # every field has a bubble.
    if not bubbles:
        raise ValueError(
            f"field {data['label']!r} has no bubbles; import the template "
            "again from its template.json"
        )
    return Field(
        label=str(data["label"]),
        block=str(data["block"]),
        kind=FieldKind(data["kind"]),
        bubbles=bubbles,
        empty_value=str(data["empty_value"]),
    )


def _template_from_dict(data: Mapping[str, Any]) -> Template:
    return Template(
        page_width=int(data["page_width"]),
        page_height=int(data["page_height"]),
        fields=tuple(_field_from_dict(f) for f in data["fields"]),
        custom_labels={k: tuple(v) for k, v in data["custom_labels"].items()},
        output_columns=tuple(data["output_columns"]),
        empty_value=str(data["empty_value"]),
        tone=ToneSettings(**data["tone"]),
        ignored_preprocessors=tuple(data["ignored_preprocessors"]),
        name=str(data.get("name", "")),
    )


def load_template(
    source: Path | str | Mapping[str, Any],
    *,
    identifier_columns: Collection[str] | None = None,
) -> Template:
    """Load an OMRChecker v1 template.json from a file path or parsed JSON data.

    A string is taken as a path. ``identifier_columns``, when given, names
    exactly the output columns (field labels or custom labels) that are
    identifiers, overriding the naming rule in
    `omr_desktop.engine.template_format.looks_like_identifier`.

    Raises:
        TemplateError: The file is missing or not JSON, or the template is
            invalid; the message names the block and field.
    """
    from omr_desktop.engine.template_format import parse_omrchecker_template

    if isinstance(source, Mapping):
        return parse_omrchecker_template(source, identifier_columns=identifier_columns)
    path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TemplateError(f"failed to read template {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise TemplateError(f"template {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise TemplateError(f"template {path} must contain a JSON object")
    return parse_omrchecker_template(
        data, identifier_columns=identifier_columns, name=path.parent.name
    )
