"""A table model of the detection profiles, for the profile dialog."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
)

from omr_desktop.db.profiles import ProfileInfo

# The profile id of a row, on every column.
PROFILE_ID_ROLE = Qt.ItemDataRole.UserRole + 1

AnyIndex = QModelIndex | QPersistentModelIndex

_MULTI_MARK_POLICIES = {
    "darkest": "Darkest wins",
    "star": "Always *",
    "all": "All marks",
}


def _decision_value(profile: ProfileInfo, key: str) -> Any:
    decision = profile.settings.get("decision")
    return decision.get(key) if isinstance(decision, dict) else None


def _number_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    return f"{value:g}"


def _policy_text(value: Any) -> str:
    if not isinstance(value, str):
        return "—"
    return _MULTI_MARK_POLICIES.get(value, value)


def _name_text(profile: ProfileInfo) -> str:
    return f"{profile.name} (built-in)" if profile.builtin else profile.name


@dataclass(frozen=True)
class _Column:
    header: str
    tooltip: str
    text: Callable[[ProfileInfo], str]
    numeric: bool = False


_COLUMNS = (
    _Column("Profile", "The profile's name", _name_text),
    _Column("Description", "What the profile is for", lambda p: p.description),
    _Column(
        "Min fill",
        "A bubble counts as marked when its fill above the paper reaches this",
        lambda p: _number_text(_decision_value(p, "min_fill")),
        numeric=True,
    ),
    _Column(
        "Min jump",
        "Minimum gap between the faintest marked and the darkest unmarked bubble",
        lambda p: _number_text(_decision_value(p, "min_jump")),
        numeric=True,
    ),
    _Column(
        "Review below",
        "Answers with a confidence below this go to review",
        lambda p: _number_text(_decision_value(p, "review_threshold")),
        numeric=True,
    ),
    _Column(
        "Multiple marks",
        "The corrected answer of a question with several marks",
        lambda p: _policy_text(_decision_value(p, "multi_mark_policy")),
    ),
)

NAME_COLUMN = 0
DESCRIPTION_COLUMN = 1


class ProfileListModel(QAbstractTableModel):
    """Show one profile per row: name, description and key decision settings.

    Settings come from ``settings["decision"]``; a missing or malformed
    value shows as a dash.
    """

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._profiles: list[ProfileInfo] = []

    def set_profiles(self, profiles: Sequence[ProfileInfo]) -> None:
        """Replace all rows with ``profiles``, in the given order."""
        self.beginResetModel()
        self._profiles = list(profiles)
        self.endResetModel()

    def profile(self, row: int) -> ProfileInfo:
        """Return the profile of ``row``. Raises IndexError outside the rows."""
        return self._profiles[row]

    def row_of(self, profile_id: int | None) -> int | None:
        """Return the row of the profile ``profile_id``, or None if it is absent."""
        for row, profile in enumerate(self._profiles):
            if profile.id == profile_id:
                return row
        return None

    def rowCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self._profiles)

    def columnCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(_COLUMNS)

    def data(self, index: AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._profiles):
            return None
        profile = self._profiles[index.row()]
        column = _COLUMNS[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            return column.text(profile)
        if role == Qt.ItemDataRole.ToolTipRole and index.column() == DESCRIPTION_COLUMN:
            return profile.description or None
        if role == Qt.ItemDataRole.TextAlignmentRole:
            horizontal = (
                Qt.AlignmentFlag.AlignRight
                if column.numeric
                else Qt.AlignmentFlag.AlignLeft
            )
            return int(horizontal | Qt.AlignmentFlag.AlignVCenter)
        if role == PROFILE_ID_ROLE:
            return profile.id
        return None

    def headerData(  # noqa: N802
        self,
        section: int,
        orientation: Qt.Orientation,
        role: int = Qt.ItemDataRole.DisplayRole,
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal or not (
            0 <= section < len(_COLUMNS)
        ):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return _COLUMNS[section].header
        if role == Qt.ItemDataRole.ToolTipRole:
            return _COLUMNS[section].tooltip
        return None
