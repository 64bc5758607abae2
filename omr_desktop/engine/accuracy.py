"""The synthetic accuracy suite: read rendered sheets and score every profile.

Each sheet is rendered, encoded, decoded as `read_sheet` decodes it and
measured once (the built-in profiles share their measurement settings).
It is then decided under every profile and compared with its truth,
bubble by bubble and answer by answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from omr_desktop.engine.decide import decide
from omr_desktop.engine.image import decode_sheet_bytes
from omr_desktop.engine.measure import measure_fills
from omr_desktop.engine.profile import BUILTIN_PROFILES, ProfileSettings
from omr_desktop.engine.synthetic import (
    CONDITIONS,
    SheetTruth,
    demo_template,
    random_truth,
    render_sheet,
)
from omr_desktop.engine.template import Template

# Seeds of the reported suite. They differ from the seeds used while the
# built-in profiles were tuned (1 to 9), so the suite is not fitted to them.
SUITE_SEED = 20_261_203
CI_SEED = 4_242
CI_SHEETS_PER_CONDITION = 50
FULL_SHEETS_PER_CONDITION = 300


@dataclass
class ConditionScore:
    """Counts for one condition under one profile.

    Bubble counts are by truth kind: ``bubbles[kind]`` bubbles of that kind
    were seen, ``read_marked[kind]`` of them were read as marked.
    """

    condition: str
    profile: str
    answers: int = 0
    correct: int = 0
    flagged: int = 0
    confident_errors: int = 0
    bubbles: dict[str, int] = field(default_factory=dict)
    read_marked: dict[str, int] = field(default_factory=dict)

    def rate(self, kind: str) -> float:
        """Fraction of bubbles of ``kind`` read as marked (NaN if none)."""
        seen = self.bubbles.get(kind, 0)
        return self.read_marked.get(kind, 0) / seen if seen else float("nan")

    @property
    def accuracy(self) -> float:
        """Fraction of answers whose raw answer equals the truth."""
        return self.correct / self.answers if self.answers else float("nan")

    @property
    def flagged_rate(self) -> float:
        """Fraction of answers sent to review."""
        return self.flagged / self.answers if self.answers else float("nan")


@dataclass(frozen=True)
class SuiteResult:
    """Scores by (condition, profile name), plus the run's size and seed."""

    scores: Mapping[tuple[str, str], ConditionScore]
    sheets_per_condition: int
    seed: int


def _light_kinds(truth: SheetTruth) -> np.ndarray:
    kinds = np.array(truth.kinds)
    return np.where((kinds == "light") & (truth.darkness >= 0.25), "light", kinds)


def _score_sheet(
    score: ConditionScore,
    truth: SheetTruth,
    kinds: np.ndarray,
    fills: np.ndarray,
    template: Template,
    settings: ProfileSettings,
) -> None:
    reading = decide(fills, template, settings.decision)
    for kind in np.unique(kinds):
        sel = kinds == kind
        score.bubbles[kind] = score.bubbles.get(kind, 0) + int(sel.sum())
        hits = int(reading.marked[sel].sum())
        score.read_marked[kind] = score.read_marked.get(kind, 0) + hits
    for answer in reading.answers:
        right = answer.answer_raw == truth.expected[answer.question]
        score.answers += 1
        score.correct += right
        score.flagged += answer.needs_review
        confident = answer.confidence_score >= settings.decision.review_threshold
        score.confident_errors += (not right) and confident


def run_suite(
    sheets_per_condition: int,
    seed: int = SUITE_SEED,
    conditions: Sequence[str] = CONDITIONS,
    profiles: Mapping[str, ProfileSettings] | None = None,
    template: Template | None = None,
) -> SuiteResult:
    """Render, read and score ``sheets_per_condition`` sheets per condition.

    ``profiles`` maps a name to settings (default: the built-ins); they
    must share measurement settings, because each sheet is measured once.

    Raises:
        ValueError: The profiles measure differently, or a condition is
            unknown.
    """
    profiles = profiles or {p.name: p.settings for p in BUILTIN_PROFILES.values()}
    measurements = {s.measurement for s in profiles.values()}
    if len(measurements) != 1:
        raise ValueError("the suite's profiles must share measurement settings")
    measurement = measurements.pop()
    template = template or demo_template()
    scores = {
        (c, name): ConditionScore(c, name) for c in conditions for name in profiles
    }
    for offset, condition in enumerate(conditions):
        rng = np.random.default_rng([seed, offset])
        for _ in range(sheets_per_condition):
            truth = random_truth(template, rng, condition)
            data = render_sheet(template, truth, rng)
            image = decode_sheet_bytes(data, template, keep_reduced=True)
            fills = measure_fills(image, template, measurement)
            kinds = _light_kinds(truth)
            for name, settings in profiles.items():
                _score_sheet(
                    scores[(condition, name)], truth, kinds, fills, template, settings
                )
    return SuiteResult(scores, sheets_per_condition, seed)


def _percent(value: float) -> str:
    return "-" if np.isnan(value) else f"{100 * value:.2f}"


def format_table(result: SuiteResult, profiles: Iterable[str] | None = None) -> str:
    """Return the scores as a Markdown table, one row per condition and profile.

    Columns are percentages: answers equal to the truth, answers flagged,
    then bubbles read as marked per truth kind; ``conf. err.`` counts wrong
    answers whose confidence reached the review threshold.
    """
    names = list(profiles) if profiles else sorted({p for _, p in result.scores})
    header = (
        "| condition | profile | answers ok % | flagged % | solid read % | "
        "light read % | partial read % | blank read % | erasure read % | "
        "stray read % | conf. err. |"
    )
    lines = [header, "|" + "---|" * 11]
    conditions = list(dict.fromkeys(c for c, _ in result.scores))
    for condition in conditions:
        for name in names:
            s = result.scores[(condition, name)]
            cells = [
                condition,
                name,
                _percent(s.accuracy),
                _percent(s.flagged_rate),
                *(
                    _percent(s.rate(k))
                    for k in ("solid", "light", "partial", "blank", "erasure", "stray")
                ),
                str(s.confident_errors),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_targets(result: SuiteResult) -> list[str]:
    """Return the accuracy targets this result misses (empty when all pass).

    Targets: Default reads every solid mark and no blank bubble as marked;
    Sensitive reads at least 99 % of light marks of darkness 0.25 or more
    and marks at most 0.1 % of blank and erasure bubbles; no wrong answer
    reaches the review threshold; at most 1 % of answers on clean sheets
    are flagged.
    """
    failures: list[str] = []
    for (condition, name), s in result.scores.items():
        where = f"{condition}/{name}"
        if name == "Default" and s.bubbles.get("solid") and s.rate("solid") < 1.0:
            failures.append(f"{where}: solid marks read {_percent(s.rate('solid'))} %")
        if name == "Default" and s.read_marked.get("blank", 0) > 0:
            failures.append(f"{where}: {s.read_marked['blank']} blank bubbles marked")
        if name == "Sensitive":
            failures.extend(_sensitive_failures(where, s))
        if s.confident_errors:
            failures.append(f"{where}: {s.confident_errors} confident wrong answers")
        if condition == "clean" and s.flagged_rate > 0.01:
            failures.append(f"{where}: {_percent(s.flagged_rate)} % flagged")
    return failures


def _sensitive_failures(where: str, s: ConditionScore) -> list[str]:
    failures = []
    if s.bubbles.get("light") and s.rate("light") < 0.99:
        failures.append(f"{where}: light marks read {_percent(s.rate('light'))} %")
    seen = s.bubbles.get("blank", 0) + s.bubbles.get("erasure", 0)
    false = s.read_marked.get("blank", 0) + s.read_marked.get("erasure", 0)
    if seen and false / seen > 0.001:
        failures.append(f"{where}: {_percent(false / seen)} % false marks")
    return failures
