"""The wheel carries ui/, resources/ and the migrations, and finds them installed."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("omr_desktop-*.whl")
    return built


@pytest.mark.slow
def test_wheel_contains_forms_icons_and_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())

    assert "omr_desktop/ui/main_panels.ui" in names
    assert "omr_desktop/resources/icons/reprocess.svg" in names
    assert "omr_desktop/resources/icons/swap.svg" in names
    assert "omr_desktop/db/migrations/0001_schema.sql" in names
    assert "omr_desktop/db/migrations/0002_reprocess_sheet_surgical.sql" in names


@pytest.mark.slow
def test_installed_package_finds_its_files_inside_itself(
    wheel: Path, tmp_path: Path
) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = (
        "from omr_desktop import resources as r\n"
        "print(r.ui_file('main_panels.ui'))\n"
        "print(r.icons_dir() / 'reprocess.svg')\n"
        "print(r.migrations_dir())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))

    # -S skips site-packages, where the editable install of the source tree
    # would win over the extracted wheel; the resources module needs no
    # third-party package.
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    paths = [Path(line) for line in done.stdout.split()]
    for path in paths:
        assert path.exists(), path
        assert path.is_relative_to(tmp_path), path
