"""Qt stays inside gui/ and app.py: the import contract and a live check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

QT_FREE_MODULES = [
    "omr_desktop.cli",
    "omr_desktop.cli_db",
    "omr_desktop.config",
    "omr_desktop.db.backup",
    "omr_desktop.db.database",
    "omr_desktop.db.embedded",
    "omr_desktop.db.migrate",
    "omr_desktop.db.status",
    "omr_desktop.engine",
    "omr_desktop.pipeline",
    "omr_desktop.server",
]


def test_import_linter_contract_holds() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")

    done = subprocess.run(
        [str(lint_imports)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 1 kept, 0 broken." in done.stdout


def test_command_line_modules_load_without_qt() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {QT_FREE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "from omr_desktop.cli import build_parser\n"
        "build_parser()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'PySide6', 'shiboken6', 'qasync', 'pyqtgraph'})\n"
        "print(loaded)\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
