"""Find PostgreSQL server binaries for the embedded database.

Search order: ``OMR_PG_BINDIR`` when set (used alone), then the PostgreSQL 16
that the ``pgserver`` wheel bundles, then the machine's own installations
(``postgres`` on PATH, then the usual package folders of Debian, Red Hat,
Homebrew, Postgres.app and the Windows installer).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omr_desktop import resources

logger = logging.getLogger(__name__)

_EXE = ".exe" if sys.platform == "win32" else ""

# Binaries the embedded database runs; a folder lacking one is skipped.
REQUIRED_TOOLS = ("initdb", "pg_ctl", "postgres")

_VERSION_PATTERN = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")

_SYSTEM_PATTERNS = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/Applications/Postgres.app/Contents/Versions/*/bin",
    "C:/Program Files/PostgreSQL/*/bin",
)


class ServerBinariesError(RuntimeError):
    """No usable PostgreSQL server binaries were found."""


@dataclass(frozen=True)
class ServerBinaries:
    """A folder holding initdb, pg_ctl and postgres of one PostgreSQL version.

    Attributes:
        bin_dir: the folder.
        version: the full version, for example ``"16.2"``.
        major: the major version, for example ``16``.
        source: where it was found: ``"OMR_PG_BINDIR"``, ``"pgserver"`` or
            ``"system"``.
    """

    bin_dir: Path
    version: str
    major: int
    source: str

    def tool(self, name: str) -> Path:
        """Return the path of the program ``name`` (``pg_dump``, ``psql``...)."""
        return self.bin_dir / f"{name}{_EXE}"

    def describe(self) -> str:
        return f"PostgreSQL {self.version} ({self.source}, {self.bin_dir})"


def probe(bin_dir: Path, source: str) -> ServerBinaries | None:
    """Return the binaries in ``bin_dir`` when they exist and run, else None."""
    if not all((bin_dir / f"{tool}{_EXE}").is_file() for tool in REQUIRED_TOOLS):
        return None
    try:
        output = subprocess.run(
            [str(bin_dir / f"postgres{_EXE}"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            env=resources.program_environment(),
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("Skipping PostgreSQL binaries in %s: %s", bin_dir, exc)
        return None
    match = _VERSION_PATTERN.search(output)
    if not match:
        logger.debug("Unrecognised 'postgres --version' output in %s", bin_dir)
        return None
    version = match.group(1) + (f".{match.group(2)}" if match.group(2) else "")
    return ServerBinaries(bin_dir, version, int(match.group(1)), source)


def pgserver_bin_dir() -> Path | None:
    """Return the bin folder of the pgserver wheel's PostgreSQL, if installed.

    Inside a PyInstaller bundle this is the bundle's copy of that folder.
    """
    install = resources.pgserver_install_dir()
    return None if install is None else install / "bin"


def _candidates() -> Iterator[tuple[Path, str]]:
    bundled = pgserver_bin_dir()
    if bundled is not None:
        yield bundled, "pgserver"
    on_path = shutil.which("postgres")
    if on_path:
        yield Path(on_path).resolve().parent, "system"
    for pattern in _SYSTEM_PATTERNS:
        # Newest version first within one layout.
        for folder in sorted(glob.glob(pattern), key=_version_key, reverse=True):
            yield Path(folder), "system"


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)


def available_binaries() -> list[ServerBinaries]:
    """Return every usable installation, in order of preference, without repeats."""
    configured = os.environ.get("OMR_PG_BINDIR")
    if configured:
        found = probe(Path(configured).expanduser(), "OMR_PG_BINDIR")
        if found is None:
            raise ServerBinariesError(
                f"OMR_PG_BINDIR is {configured!r}, but that folder has no working "
                "initdb, pg_ctl and postgres. Point it at a PostgreSQL bin "
                "folder, or unset it to search automatically."
            )
        return [found]
    seen: set[Path] = set()
    result = []
    for folder, source in _candidates():
        key = folder.resolve() if folder.exists() else folder
        if key in seen:
            continue
        seen.add(key)
        found = probe(folder, source)
        if found is not None:
            result.append(found)
    return result


def find_server_binaries(required_major: int | None = None) -> ServerBinaries:
    """Choose the binaries for the embedded database.

    Args:
        required_major: the major version of an existing cluster, which only
            binaries of the same major version can run.

    Raises:
        ServerBinariesError: nothing suitable is installed; the message lists
            what was found and what to install.
    """
    found = available_binaries()
    if required_major is not None:
        matching = [b for b in found if b.major == required_major]
        if matching:
            return matching[0]
    elif found:
        return found[0]
    raise ServerBinariesError(_missing_message(found, required_major))


def _missing_message(found: list[ServerBinaries], required_major: int | None) -> str:
    listed = "; ".join(b.describe() for b in found) or "none"
    if required_major is None:
        return (
            "No PostgreSQL server binaries were found for the embedded database "
            f"(found: {listed}). Install the 'pgserver' package (Python 3.12 or "
            "older), install PostgreSQL, or set OMR_PG_BINDIR to its bin folder. "
            "To use an existing server instead, set OMR_DATABASE_URL."
        )
    return (
        f"The embedded database was created by PostgreSQL {required_major}, but "
        f"no PostgreSQL {required_major} server binaries were found (found: "
        f"{listed}). Install PostgreSQL {required_major} and set OMR_PG_BINDIR to "
        "its bin folder, or move the data folder aside to start a new, empty "
        "embedded database."
    )
