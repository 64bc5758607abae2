"""Detection engine: templates, profiles, bubble measurement and decisions.

Plain Python, numpy and OpenCV only: no Qt and no database, so the desktop
worker pool, the HTTP server and a cluster worker run the same code.
"""

from omr_desktop.engine.decide import (
    REASONS,
    Answer,
    AnswerColumns,
    SheetReading,
    decide,
)
from omr_desktop.engine.image import SheetImageError, load_sheet_image
from omr_desktop.engine.measure import measure_fills
from omr_desktop.engine.profile import (
    BUILTIN_PROFILES,
    BuiltinProfile,
    DecisionSettings,
    MeasurementSettings,
    ProfileError,
    ProfileSettings,
    measurement_hash,
    parse_profile_settings,
)
from omr_desktop.engine.reader import MeasurementMismatchError, read_sheet, redecide
from omr_desktop.engine.template import (
    Bubble,
    Field,
    FieldKind,
    Template,
    TemplateError,
    load_template,
)

__all__ = [
    "BUILTIN_PROFILES",
    "REASONS",
    "Answer",
    "AnswerColumns",
    "Bubble",
    "BuiltinProfile",
    "DecisionSettings",
    "Field",
    "FieldKind",
    "MeasurementMismatchError",
    "MeasurementSettings",
    "ProfileError",
    "ProfileSettings",
    "SheetImageError",
    "SheetReading",
    "Template",
    "TemplateError",
    "decide",
    "load_sheet_image",
    "load_template",
    "measure_fills",
    "measurement_hash",
    "parse_profile_settings",
    "read_sheet",
    "redecide",
]
