"""Load the Qt Designer forms from ui/ at run time.

The whole application loads forms with QUiLoader rather than compiling them
with pyside6-uic, so a form edited in Designer needs no build step.
"""

from __future__ import annotations

from PySide6.QtCore import QFile, QIODevice
from PySide6.QtUiTools import QUiLoader
from PySide6.QtWidgets import QWidget

from omr_desktop.resources import ui_file


class FormLoadError(RuntimeError):
    """A Designer form could not be read."""


def load_form(name: str, parent: QWidget | None = None) -> QWidget:
    """Build the widget tree of the form ``name`` (for example ``main_panels.ui``)."""
    path = ui_file(name)
    device = QFile(str(path))
    if not device.open(QIODevice.OpenModeFlag.ReadOnly):
        raise FormLoadError(f"Cannot open the form {path}: {device.errorString()}")
    try:
        widget = QUiLoader().load(device, parent)
    finally:
        device.close()
    if widget is None:
        raise FormLoadError(f"The form {path} is invalid.")
    return widget
