"""Locate the files the application ships beside its code.

Three layouts must work, and this is the only module that handles them:

- a source checkout or editable install: ``ui/`` and ``resources/`` sit at the
  repository's top level, one folder above the package;
- an installed wheel: the build copies them into the package as
  ``omr_desktop/ui`` and ``omr_desktop/resources``;
- a PyInstaller bundle: ``build.spec`` puts them under ``omr_desktop/`` inside
  the bundle folder, which is where the frozen package's ``__file__`` points.

No Qt here: the GUI registers the icon folder with Qt itself.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


class MissingResourceError(FileNotFoundError):
    """A shipped file is missing: the installation is incomplete."""


def _find_dir(name: str) -> Path:
    candidates = (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise MissingResourceError(
        f"The {name}/ folder is missing (looked in {tried}). "
        "Reinstall OMR Desktop; in a source checkout run it from the repository."
    )


def ui_dir() -> Path:
    """Return the folder of the Qt Designer forms (``*.ui``)."""
    return _find_dir("ui")


def resources_dir() -> Path:
    """Return the folder of icons and other static resources."""
    return _find_dir("resources")


def icons_dir() -> Path:
    """Return the folder of the application's icons (SVG)."""
    return resources_dir() / "icons"


def migrations_dir() -> Path:
    """Return the folder of the SQL migrations, which live inside the package."""
    path = _PACKAGE_DIR / "db" / "migrations"
    if not path.is_dir():
        raise MissingResourceError(
            f"The SQL migrations folder {path} is missing. Reinstall OMR Desktop."
        )
    return path


def ui_file(name: str) -> Path:
    """Return the path of the Designer form ``name``, such as ``main_panels.ui``."""
    path = ui_dir() / name
    if not path.is_file():
        raise MissingResourceError(
            f"The form {path} is missing. Reinstall OMR Desktop."
        )
    return path
