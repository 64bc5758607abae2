"""Render aligned synthetic answer sheets with the truth of every bubble.

`demo_template` lays out an A4 page at 200 dpi; `random_truth` draws what a
student marked under a named condition; `render_sheet` paints it and
encodes JPEG, PNG or TIFF. Every scan also gets a paper grey of 222-245,
an offset of up to 4 px against the template and a slight blur. Everything
random comes from the ``rng`` passed in, so one seed gives the same sheet
bytes every time.

Darkness follows the accuracy definition: ``1 - mean grey over the mark /
local paper grey``. Coverage is the fraction of the bubble's area that the
mark covers. Ranges by kind:

========  ===========  ===========  ==========================================
kind      darkness     coverage     expected
========  ===========  ===========  ==========================================
solid     0.80 - 1.00  0.90 - 1.00  marked
light     0.25 - 0.40  0.60 - 1.00  marked (a light pencil mark)
partial   0.80 - 1.00  0.65 - 0.85  marked (a hurried fill from one side)
erasure   0.10 - 0.20  0.70 - 1.00  blank (residue of an erased mark)
stray     0.60 - 0.90  0.03 - 0.10  blank (a dot or dash)
blank     0            0            blank
========  ===========  ===========  ==========================================
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from omr_desktop.engine.template import FieldKind, Template, load_template

PAGE_WIDTH_PX = 1700  # A4 at 200 dpi
PAGE_HEIGHT_PX = 2400
BUBBLE_PX = 28
PAPER_GREY = 235
KINDS = ("blank", "solid", "light", "partial", "erasure", "stray")
MARKED_KINDS = frozenset({"solid", "light", "partial"})
CONDITIONS = (
    "clean",
    "light",
    "partial",
    "erasure",
    "multi",
    "stray",
    "letters",
    "dark",
    "bright",
    "gradient",
    "blank",
    "demo",
)
_RANGES: Mapping[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "solid": ((0.80, 1.00), (0.90, 1.00)),
    "light": ((0.25, 0.40), (0.60, 1.00)),
    "partial": ((0.80, 1.00), (0.65, 0.85)),
    "erasure": ((0.10, 0.20), (0.70, 1.00)),
    "stray": ((0.60, 0.90), (0.03, 0.10)),
}
_OUTLINE_GREY = 95
_LETTER_GREY = 120
_base_lock = threading.Lock()


@dataclass(frozen=True)
class SheetTruth:
    """What is on one synthetic sheet.

    Attributes:
        condition: One of `CONDITIONS`.
        kinds: Per bubble, in template order, one of `KINDS`.
        darkness: float32 (n_bubbles,), darkness of each bubble's mark.
        coverage: float32 (n_bubbles,), fraction of the bubble covered.
        expected: Output column to the expected raw answer (the values of
            solid, light and partial marks joined in bubble order).
        letters: Option letters are printed inside the bubbles.
        brightness_shift: Grey levels added to the whole scan (-40..40).
        gradient: The bottom quarter darkens from 235 to 150 grey.
        paper_grey: Grey level of the blank paper before the brightness
            shift, 222-245 (235 under "dark", "bright" and "gradient").
        offset_px: (dx, dy) by which the scan is moved against the
            template, -4..4 px each, as a scanner feeds a sheet unevenly.
    """

    condition: str
    kinds: tuple[str, ...]
    darkness: npt.NDArray[np.float32]
    coverage: npt.NDArray[np.float32]
    expected: Mapping[str, str]
    letters: bool
    brightness_shift: int
    gradient: bool
    paper_grey: float = float(PAPER_GREY)
    offset_px: tuple[int, int] = (0, 0)


def demo_template(questions: int = 150, options: int = 5) -> Template:
    """Build the demo layout: a 10-digit roll number and the questions.

    The page is 1700 x 2400 px (A4 at 200 dpi) with 28 px bubbles, so
    sheets are decoded at half size. Questions run down columns q1, q2, ...

    Raises:
        ValueError: ``questions`` or ``options`` does not fit on the page.
    """
    if not 2 <= options <= 10 or questions < 1:
        raise ValueError(
            f"need 1+ questions and 2-10 options, got {questions}, {options}"
        )
    return load_template(_demo_template_json(questions, options))


def _demo_template_json(questions: int, options: int) -> dict[str, Any]:
    bubbles_gap = 40
    column_width = options * bubbles_gap + 90
    columns = max(1, (PAGE_WIDTH_PX - 120) // column_width)
    rows = math.ceil(questions / columns)
    top, bottom = 760, PAGE_HEIGHT_PX - 60
    labels_gap = min(56.0, (bottom - top - BUBBLE_PX) / max(rows - 1, 1))
    if labels_gap < BUBBLE_PX + 4:
        raise ValueError(f"{questions} questions of {options} options do not fit")
    values = [chr(ord("A") + i) for i in range(options)]
    blocks: dict[str, Any] = {
        "Roll": {
            "fieldType": "QTYPE_INT",
            "origin": [160, 160],
            "fieldLabels": ["roll1..10"],
            "bubblesGap": 44,
            "labelsGap": 44,
        }
    }
    for c in range(columns):
        first, last = c * rows + 1, min((c + 1) * rows, questions)
        if first > last:
            break
        labels = [f"q{first}..{last}"] if last > first else [f"q{first}"]
        blocks[f"Column{c + 1}"] = {
            "bubbleValues": values,
            "direction": "horizontal",
            "origin": [80 + c * column_width + 70, top],
            "fieldLabels": labels,
            "bubblesGap": bubbles_gap,
            "labelsGap": labels_gap,
        }
    return {
        "pageDimensions": [PAGE_WIDTH_PX, PAGE_HEIGHT_PX],
        "bubbleDimensions": [BUBBLE_PX, BUBBLE_PX],
        "customLabels": {"Roll": ["roll1..10"]},
        "fieldBlocks": blocks,
        "preProcessors": [],
    }


def _question_plan(condition: str, rng: np.random.Generator, n: int) -> list[str]:
    """Draw what each multiple-choice question gets under a condition."""
    plans = {
        "clean": (["solid", "none"], [0.95, 0.05]),
        "letters": (["solid", "none"], [0.95, 0.05]),
        "dark": (["solid", "none"], [0.95, 0.05]),
        "bright": (["solid", "none"], [0.95, 0.05]),
        "gradient": (["solid", "none"], [0.95, 0.05]),
        "light": (["light", "solid", "none"], [0.6, 0.3, 0.1]),
        "partial": (["partial", "solid", "none"], [0.6, 0.3, 0.1]),
        "erasure": (["solid+erasure", "erasure", "solid"], [0.5, 0.3, 0.2]),
        "multi": (["double", "solid", "none"], [0.4, 0.5, 0.1]),
        "stray": (["solid+stray", "stray", "solid"], [0.5, 0.3, 0.2]),
        "blank": (["none"], [1.0]),
        "demo": (["solid", "light", "none"], [0.87, 0.10, 0.03]),
    }
    if condition not in plans:
        raise ValueError(
            f"unknown condition {condition!r}; expected one of {CONDITIONS}"
        )
    choices, weights = plans[condition]
    return [str(c) for c in rng.choice(choices, size=n, p=weights)]


def _apply_plan(plan: str, n_options: int, rng: np.random.Generator) -> list[str]:
    kinds = ["blank"] * n_options
    picks = rng.permutation(n_options)
    parts = {"none": [], "double": ["solid", "solid"]}.get(plan, plan.split("+"))
    for position, kind in zip(picks, parts, strict=False):
        kinds[int(position)] = kind
    return kinds


def random_truth(
    template: Template, rng: np.random.Generator, condition: str = "clean"
) -> SheetTruth:
    """Draw the marks of one sheet under ``condition`` (one of `CONDITIONS`).

    Identifier fields always get one solid mark each, except under
    "blank". The "demo" condition marks about one question in ten with a
    light mark, three in a hundred stay blank, and the rest are solid.

    Raises:
        ValueError: ``condition`` is unknown.
    """
    questions = [f for f in template.fields if f.kind is FieldKind.QUESTION]
    plans = iter(_question_plan(condition, rng, len(questions)))
    kinds: list[str] = []
    for fld in template.fields:
        n = len(fld.bubbles)
        if fld.kind is FieldKind.IDENTIFIER:
            plan = "none" if condition == "blank" else "solid"
        else:
            plan = next(plans)
        kinds.extend(_apply_plan(plan, n, rng))
    darkness, coverage = _draw_levels(kinds, rng)
    offset = rng.integers(-4, 5, size=2)
    fixed_paper = (
        float(PAPER_GREY) if condition in ("dark", "bright", "gradient") else 0.0
    )
    return SheetTruth(
        condition=condition,
        kinds=tuple(kinds),
        darkness=darkness,
        coverage=coverage,
        expected=_expected_answers(template, kinds),
        letters=condition in ("letters", "demo"),
        brightness_shift={"dark": -40, "bright": 40}.get(condition, 0),
        gradient=condition == "gradient",
        paper_grey=fixed_paper if fixed_paper else float(rng.uniform(222, 245)),
        offset_px=(int(offset[0]), int(offset[1])),
    )


def _draw_levels(
    kinds: list[str], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    darkness = np.zeros(len(kinds), dtype=np.float32)
    coverage = np.zeros(len(kinds), dtype=np.float32)
    for i, kind in enumerate(kinds):
        if kind in _RANGES:
            (d0, d1), (c0, c1) = _RANGES[kind]
            darkness[i] = rng.uniform(d0, d1)
            coverage[i] = rng.uniform(c0, c1)
    return darkness, coverage


def _expected_answers(template: Template, kinds: list[str]) -> dict[str, str]:
    per_field: dict[str, str] = {}
    i = 0
    for fld in template.fields:
        values = [
            b.value for j, b in enumerate(fld.bubbles) if kinds[i + j] in MARKED_KINDS
        ]
        per_field[fld.label] = "".join(values)
        i += len(fld.bubbles)
    expected = {}
    for column in template.output_columns:
        parts = [per_field[label] for label in template.column_fields(column)]
        expected[column] = "".join(parts)
    return expected


def _base_page(template: Template, letters: bool) -> npt.NDArray[np.uint8]:
    """Return the printed, unmarked page (cached per template and letters)."""
    key = f"_synthetic_base_{int(letters)}"
    page: npt.NDArray[np.uint8] | None = template.__dict__.get(key)
    if page is not None:
        return page
    with _base_lock:
        noise = np.random.default_rng(12345).normal(
            0.0, 2.0, (template.page_height, template.page_width)
        )
        canvas = np.clip(PAPER_GREY + noise, 0, 255).astype(np.uint8)
        cv2.putText(
            canvas,
            "OMR DESKTOP SYNTHETIC SHEET",
            (80, 90),
            cv2.FONT_HERSHEY_SIMPLEX,
            1.2,
            60,
            2,
            cv2.LINE_AA,
        )
        for fld in template.fields:
            _print_field(canvas, fld.label, fld.bubbles, letters)
        canvas.setflags(write=False)
        template.__dict__[key] = canvas
        return canvas


def _print_field(
    canvas: npt.NDArray[np.uint8], label: str, bubbles: Any, letters: bool
) -> None:
    first = bubbles[0]
    if first.y != bubbles[-1].y:  # a vertical digit column: no row label
        pass
    else:
        cv2.putText(
            canvas,
            label,
            (first.x - 68, first.y + 20),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.55,
            70,
            1,
            cv2.LINE_AA,
        )
    for b in bubbles:
        centre = (b.x + b.width // 2, b.y + b.height // 2)
        cv2.circle(canvas, centre, b.width // 2 + 3, _OUTLINE_GREY, 2, cv2.LINE_AA)
        if letters:
            size, _ = cv2.getTextSize(b.value, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
            origin = (centre[0] - size[0] // 2, centre[1] + size[1] // 2)
            cv2.putText(
                canvas,
                b.value,
                origin,
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                _LETTER_GREY,
                1,
                cv2.LINE_AA,
            )


def _mark_alpha(
    kind: str, coverage: float, size: int, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Return a (size, size) float32 mask in [0, 1] with the given area share."""
    r = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - r
    if kind == "partial":
        alpha = _chord_fill(xx, yy, r + 0.5, coverage, rng)
    elif kind == "stray":
        alpha = _dash(size, coverage, rng)
    else:
        alpha = _hand_ellipse(xx, yy, r + 0.5, coverage, rng)
    return np.asarray(alpha, dtype=np.float32)


def _chord_fill(
    xx: npt.NDArray[np.float32],
    yy: npt.NDArray[np.float32],
    radius: float,
    coverage: float,
    rng: np.random.Generator,
) -> npt.NDArray[np.float32]:
    """Return a fill from one side: the part of the disc beyond a chord."""
    angle = rng.uniform(0, 2 * np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    cut = _chord_offset(coverage) * radius
    inside = np.clip(radius - np.hypot(xx, yy) + 0.5, 0, 1)
    return np.asarray(np.clip(along - cut + 0.5, 0, 1) * inside, dtype=np.float32)


def _dash(
    size: int, coverage: float, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Return a 2 px stroke whose area is about ``coverage`` of the bubble."""
    r = (size - 1) / 2.0
    alpha = np.zeros((size, size), np.float32)
    length = max(2.0, coverage * np.pi * (r + 0.5) ** 2 / 2.0)
    cx, cy = rng.uniform(-r / 2, r / 2, size=2)
    angle = rng.uniform(0, np.pi)
    start = (int(r + cx), int(r + cy))
    end = (int(r + cx + length * np.cos(angle)), int(r + cy + length * np.sin(angle)))
    cv2.line(alpha, start, end, 1.0, 2, cv2.LINE_AA)
    return alpha


def _hand_ellipse(
    xx: npt.NDArray[np.float32],
    yy: npt.NDArray[np.float32],
    radius: float,
    coverage: float,
    rng: np.random.Generator,
) -> npt.NDArray[np.float32]:
    """Return an ellipse of the requested area, a little stretched, turned
    and off centre, as a hand fills a bubble."""
    mark_radius = radius * math.sqrt(coverage)
    stretch = rng.uniform(0.9, 1.1)
    turn = rng.uniform(0, np.pi)
    dx, dy = rng.uniform(-0.08, 0.08, size=2) * radius
    along = (xx - dx) * np.cos(turn) + (yy - dy) * np.sin(turn)
    across = (yy - dy) * np.cos(turn) - (xx - dx) * np.sin(turn)
    dist = np.hypot(along / stretch, across * stretch)
    return np.asarray(np.clip(mark_radius - dist + 0.5, 0, 1), dtype=np.float32)


def _chord_offset(coverage: float) -> float:
    """Return the chord's signed distance (in radii) that leaves ``coverage``."""
    lo, hi = -1.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        area = (math.acos(mid) - mid * math.sqrt(1 - mid * mid)) / math.pi
        lo, hi = (mid, hi) if area > coverage else (lo, mid)
    return (lo + hi) / 2


def render_sheet_image(
    template: Template, truth: SheetTruth, rng: np.random.Generator
) -> npt.NDArray[np.uint8]:
    """Paint a sheet as a grey page, shape (page_height, page_width).

    Marks darken the printed page by their darkness. The scan then gets
    its offset, shading, brightness shift and a slight optical blur.
    """
    page = _base_page(template, truth.letters).astype(np.float32)
    page *= truth.paper_grey / PAPER_GREY
    for index, (_, bubble) in enumerate(template.iter_bubbles()):
        kind = truth.kinds[index]
        if kind == "blank":
            continue
        size = min(bubble.width, bubble.height)
        alpha = _mark_alpha(kind, float(truth.coverage[index]), size, rng)
        texture = 1.0 + rng.normal(0.0, 0.06, alpha.shape).astype(np.float32)
        ink = np.clip(alpha * float(truth.darkness[index]) * texture, 0.0, 1.0)
        region = page[bubble.y : bubble.y + size, bubble.x : bubble.x + size]
        region *= 1.0 - ink
    page = _offset(page, truth.offset_px, truth.paper_grey)
    if truth.gradient:
        _apply_gradient(page)
    if truth.brightness_shift:
        page += truth.brightness_shift
    page = np.asarray(cv2.GaussianBlur(page, (3, 3), 0.7), dtype=np.float32)
    return np.clip(page, 0, 255).astype(np.uint8)


def _offset(
    page: npt.NDArray[np.float32], offset: tuple[int, int], paper: float
) -> npt.NDArray[np.float32]:
    """Return the page moved by (dx, dy) px, paper filling the uncovered edge."""
    dx, dy = offset
    if dx == 0 and dy == 0:
        return page
    height, width = page.shape
    moved = np.full_like(page, paper)
    moved[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = page[
        max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)
    ]
    return moved


def _apply_gradient(page: npt.NDArray[np.float32]) -> None:
    """Darken the bottom quarter so that 235 grey paper falls to 150."""
    height = page.shape[0]
    start = height - height // 4
    factor = np.linspace(1.0, 150.0 / PAPER_GREY, height - start, dtype=np.float32)
    page[start:] *= factor[:, None]


def render_sheet(
    template: Template,
    truth: SheetTruth,
    rng: np.random.Generator,
    fmt: str = "jpg",
    quality: int | None = None,
) -> bytes:
    """Render a sheet and encode it as ``fmt`` ("jpg", "png" or "tiff").

    ``quality`` is the JPEG quality; by default it is drawn from 75-90.

    Raises:
        ValueError: ``fmt`` is not one of the three formats.
    """
    image = render_sheet_image(template, truth, rng)
    if fmt in ("jpg", "jpeg"):
        q = int(rng.integers(75, 91)) if quality is None else quality
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])
    elif fmt == "png":
        ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    elif fmt in ("tif", "tiff"):
        ok, data = cv2.imencode(".tiff", image)
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected jpg, png or tiff")
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {fmt} image")
    return bytes(data.tobytes())
