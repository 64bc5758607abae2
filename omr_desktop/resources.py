"""Locate the files the application ships beside its code.

Three layouts must work, and this is the only module that handles them:

- a source checkout or editable install: ``ui/`` and ``resources/`` sit at the
  repository's top level, one folder above the package;
- an installed wheel: the build copies them into the package as
  ``omr_desktop/ui`` and ``omr_desktop/resources``;
- a PyInstaller bundle: ``build.spec`` copies every folder that
  ``bundle_data_dirs`` lists to the place it names inside the bundle's
  contents folder (``sys._MEIPASS``), which is also where the frozen
  package's ``__file__`` points.

The pgserver wheel's PostgreSQL is found the same way: in site-packages
when running from Python, in the bundle when frozen.

No Qt here: the GUI registers the icon folder with Qt itself.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent

# Where the pgserver wheel's files sit, relative to the folder that contains
# the ``pgserver`` package. Its client tools (initdb, psql, pg_dump) load
# libpq through the RPATH ``$ORIGIN/../../../pgserver.libs``, so the two
# folders must keep this relative layout wherever they are copied.
PGSERVER_INSTALL_PATH = Path("pgserver", "pginstall")
PGSERVER_LIBS_PATH = Path("pgserver.libs")

# Parts of the pgserver installation that only building extensions needs:
# C headers, static libraries, pkg-config files, the PGXS makefiles, and the
# pg_config and ecpg programs.
PGSERVER_BUILD_ONLY = ("include", "*.a", "pkgconfig", "pgxs", "pg_config", "ecpg")


class MissingResourceError(FileNotFoundError):
    """A shipped file is missing: the installation is incomplete."""


def bundle_dir() -> Path | None:
    """Return the bundle's contents folder when running frozen, else None."""
    meipass = getattr(sys, "_MEIPASS", None)
    if getattr(sys, "frozen", False) and meipass:
        return Path(meipass)
    return None


def program_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``base`` (default ``os.environ``) for a PostgreSQL program.

    PyInstaller's bootloader puts the bundle's library folder first in
    ``LD_LIBRARY_PATH`` and saves the user's value in
    ``LD_LIBRARY_PATH_ORIG`` (PyInstaller manual, "The Bootstrap Process in
    Detail"). A program started from the bundle would then load the
    bundle's copies of system libraries, so when frozen the user's value
    comes back, or the variable goes when there was none.
    """
    env = dict(os.environ if base is None else base)
    if bundle_dir() is None:
        return env
    original = env.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is None:
        env.pop("LD_LIBRARY_PATH", None)
    else:
        env["LD_LIBRARY_PATH"] = original
    return env


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


def pgserver_install_dir() -> Path | None:
    """Return the pgserver wheel's PostgreSQL folder (``bin``, ``lib``, ``share``).

    Returns None when pgserver is not installed, or when a bundle was built
    without it. Outside a bundle the package is located without importing
    it: importing pgserver runs code that only its own server wrapper needs.
    """
    bundle = bundle_dir()
    if bundle is not None:
        path = bundle / PGSERVER_INSTALL_PATH
        return path if path.is_dir() else None
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    return package.parent / PGSERVER_INSTALL_PATH


def pgserver_libs_dir(install_dir: Path) -> Path:
    """Return the folder of the shared libraries beside ``install_dir``.

    The folder may not exist: wheels for some platforms have none.
    """
    root = install_dir
    for _ in PGSERVER_INSTALL_PATH.parts:
        root = root.parent
    return root / PGSERVER_LIBS_PATH


def bundle_data_dirs() -> list[tuple[Path, Path]]:
    """List the folders a bundle must carry: ``(source, path in the bundle)``.

    ``build.spec`` copies each source folder to its path under the bundle's
    contents folder, where the functions above look when frozen.

    Raises:
        MissingResourceError: a folder is missing from this installation.
    """
    folders = [
        (ui_dir(), Path("omr_desktop", "ui")),
        (resources_dir(), Path("omr_desktop", "resources")),
        (migrations_dir(), Path("omr_desktop", "db", "migrations")),
    ]
    install = pgserver_install_dir()
    if install is not None and install.is_dir():
        folders.append((install, PGSERVER_INSTALL_PATH))
        libs = pgserver_libs_dir(install)
        if libs.is_dir():
            folders.append((libs, PGSERVER_LIBS_PATH))
    return folders
