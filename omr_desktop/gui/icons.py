"""Register the shipped icons with Qt under the ``icons:`` prefix."""

from __future__ import annotations

from PySide6.QtCore import QDir
from PySide6.QtGui import QIcon

from omr_desktop.resources import icons_dir


def register_icon_search_path() -> None:
    """Make ``QIcon("icons:reprocess.svg")`` find the shipped files."""
    QDir.addSearchPath("icons", str(icons_dir()))


def icon(name: str) -> QIcon:
    """Return the shipped icon ``name`` (a file name such as ``swap.svg``)."""
    return QIcon(f"icons:{name}")


def flag_icon(flag: str) -> QIcon:
    """Return the icon of a sheet flag code such as ``MULTI_MARK``."""
    return icon(f"flag-{flag.lower().replace('_', '-')}.svg")
