"""Turn a stored sheet into the bubble overlay Panel C draws (no widgets here)."""

from __future__ import annotations

import numpy as np

from omr_desktop.db.queries import SheetDetail
from omr_desktop.engine import Template, decide
from omr_desktop.engine.profile import ProfileSettings, parse_profile_settings
from omr_desktop.gui.widgets.sheet_view import (
    BLANK,
    ERASED,
    MARKED,
    UNCERTAIN,
    BubbleOverlay,
)


def sheet_template(detail: SheetDetail) -> Template:
    return Template.from_dict(detail.layout)


def profile_settings(detail: SheetDetail) -> ProfileSettings:
    return parse_profile_settings(detail.profile_settings or {})


def bubble_overlays(detail: SheetDetail, template: Template) -> list[BubbleOverlay]:
    """Colour every bubble by the decision the stored fills give.

    With the sheet's stored fills the engine decides again under the profile
    that produced them, so the overlay matches the stored answers; without
    them (a sheet never read) a bubble counts as marked when its value is in
    the stored raw answer.
    """
    settings = profile_settings(detail)
    column_of = {
        label: column
        for column in template.output_columns
        for label in template.column_fields(column)
    }
    answers = {a.question: a for a in detail.answers}
    marked = _marked(detail, template, settings)
    fills = np.asarray(detail.fills or (), dtype=np.float32)
    overlays = []
    index = 0
    for field in template.fields:
        column = column_of.get(field.label, field.label)
        answer = answers.get(column)
        for bubble in field.bubbles:
            if marked is not None:
                is_marked = bool(marked[index])
            else:
                is_marked = answer is not None and bubble.value in answer.answer_raw
            fill = float(fills[index]) if index < len(fills) else 0.0
            state = _state(is_marked, fill, answer, settings)
            overlays.append(
                BubbleOverlay(
                    bubble.x, bubble.y, bubble.width, bubble.height, state, column
                )
            )
            index += 1
    return overlays


def _marked(
    detail: SheetDetail, template: Template, settings: ProfileSettings
) -> np.ndarray | None:
    total = sum(len(f.bubbles) for f in template.fields)
    if detail.fills is None or len(detail.fills) != total:
        return None
    reading = decide(
        np.asarray(detail.fills, dtype=np.float32), template, settings.decision
    )
    return reading.marked


def _state(
    is_marked: bool, fill: float, answer: object, settings: ProfileSettings
) -> str:
    needs_review = bool(getattr(answer, "needs_review", False))
    reason = getattr(answer, "reason", "")
    if needs_review and (is_marked or fill >= settings.decision.erased_low):
        return UNCERTAIN
    if is_marked:
        return MARKED
    if reason == "erased" and fill >= settings.decision.erased_low:
        return ERASED
    return BLANK
