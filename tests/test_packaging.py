"""The wheel and the PyInstaller bundle carry the shipped files and find them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from omr_desktop import resources

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
    kernels = [n for n in names if n.startswith("omr_desktop/engine/_kernels.")]
    assert len(kernels) == 1, kernels
    assert kernels[0].endswith((".so", ".pyd"))
    # The compiled module makes the wheel platform-specific.
    assert not wheel.name.endswith("-none-any.whl"), wheel.name


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


# -- The PyInstaller bundle ----------------------------------------------


def bundle_layout_copy(bundle: Path) -> None:
    """Lay out ``bundle`` as build.spec does, with the package's lookup code."""
    for source, destination in resources.bundle_data_dirs():
        skipped = (
            shutil.ignore_patterns(*resources.PGSERVER_BUILD_ONLY)
            if destination == resources.PGSERVER_INSTALL_PATH
            else None
        )
        shutil.copytree(source, bundle / destination, ignore=skipped)
    package = REPO / "omr_desktop"
    for name in ("__init__.py", "resources.py"):
        shutil.copy(package / name, bundle / "omr_desktop" / name)


def test_frozen_lookup_finds_files_in_bundle_layout(tmp_path: Path) -> None:
    bundle = tmp_path / "_internal"
    bundle_layout_copy(bundle)
    code = (
        "import sys\n"
        f"sys.frozen = True\nsys._MEIPASS = {str(bundle)!r}\n"
        "from omr_desktop import resources as r\n"
        "print(r.bundle_dir())\n"
        "print(r.ui_file('main_panels.ui'))\n"
        "print(r.ui_file('profile_dialog.ui'))\n"
        "print(r.icons_dir() / 'reprocess.svg')\n"
        "print(r.migrations_dir() / '0001_schema.sql')\n"
        "install = r.pgserver_install_dir()\n"
        "if install is not None:\n"
        "    print(install / 'bin' / 'postgres')\n"
        "    print(install / 'share' / 'postgresql' / 'postgres.bki')\n"
    )

    # -S keeps site-packages, and with it the source tree, off the path.
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(bundle)),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    paths = [Path(line) for line in done.stdout.split()]
    assert paths[0] == bundle
    for path in paths[1:]:
        assert path.is_file(), path
        assert path.is_relative_to(bundle), path
    if resources.pgserver_install_dir() is not None:
        assert len(paths) == 7, "the bundle lost the pgserver PostgreSQL"


def test_bundle_layout_leaves_out_build_only_files(tmp_path: Path) -> None:
    install = resources.pgserver_install_dir()
    if install is None:
        pytest.skip("pgserver is not installed")
    bundle = tmp_path / "_internal"
    bundle_layout_copy(bundle)
    copied = bundle / resources.PGSERVER_INSTALL_PATH

    assert (copied / "bin" / "initdb").is_file()
    assert not (copied / "include").exists()
    assert not list(copied.rglob("*.a"))
    assert (bundle / resources.PGSERVER_LIBS_PATH).is_dir()


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        # The bootloader prepended its folder to the user's value.
        (
            {"LD_LIBRARY_PATH": "BUNDLE:/opt/lib", "LD_LIBRARY_PATH_ORIG": "/opt/lib"},
            {"LD_LIBRARY_PATH": "/opt/lib"},
        ),
        # The user had no LD_LIBRARY_PATH.
        ({"LD_LIBRARY_PATH": "BUNDLE"}, {}),
    ],
)
def test_program_environment_restores_library_path(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    environment: dict[str, str],
    expected: dict[str, str],
) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    frozen_environment = {
        key: value.replace("BUNDLE", str(tmp_path))
        for key, value in environment.items()
    }

    env = resources.program_environment({**frozen_environment, "HOME": "/home/editor"})

    assert env == {**expected, "HOME": "/home/editor"}


def test_program_environment_unchanged_outside_bundle() -> None:
    environment = {"LD_LIBRARY_PATH": "/opt/lib", "LD_LIBRARY_PATH_ORIG": "/x"}

    assert resources.bundle_dir() is None
    assert resources.program_environment(environment) == environment


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build dist/omr-desktop/ from the checkout with build.spec."""
    work = tmp_path_factory.mktemp("pyinstaller")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--log-level",
            "WARN",
            "--distpath",
            str(work / "dist"),
            "--workpath",
            str(work / "build"),
            str(REPO / "build.spec"),
        ],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    return work / "dist" / "omr-desktop"


@pytest.mark.slow
def test_bundle_contains_plugins_forms_and_postgresql(bundle: Path) -> None:
    contents = bundle / "_internal"
    plugins = contents / "PySide6" / "Qt" / "plugins"
    expected = [
        plugins / "platforms" / "libqoffscreen.so",
        plugins / "platforms" / "libqxcb.so",
        plugins / "iconengines" / "libqsvgicon.so",
        plugins / "imageformats" / "libqsvg.so",
        contents / "omr_desktop" / "ui" / "main_panels.ui",
        contents / "omr_desktop" / "ui" / "profile_dialog.ui",
        contents / "omr_desktop" / "ui" / "progress_dialog.ui",
        contents / "omr_desktop" / "resources" / "icons" / "reprocess.svg",
        contents / "omr_desktop" / "db" / "migrations" / "0001_schema.sql",
    ]
    if resources.pgserver_install_dir() is not None:
        postgres = contents / resources.PGSERVER_INSTALL_PATH
        expected += [
            postgres / "bin" / name
            for name in (
                "initdb",
                "pg_ctl",
                "postgres",
                "pg_dump",
                "pg_restore",
                "psql",
            )
        ]
        expected.append(postgres / "lib" / "postgresql" / "plpgsql.so")

    assert (bundle / "omr-desktop").is_file()
    assert list((contents / "omr_desktop" / "engine").glob("_kernels.*"))
    for path in expected:
        assert path.is_file(), path
    for name in ("initdb", "pg_ctl", "postgres"):
        tool = contents / resources.PGSERVER_INSTALL_PATH / "bin" / name
        assert not tool.exists() or os.access(tool, os.X_OK), tool


@pytest.mark.slow
def test_bundle_self_test_passes_outside_checkout(bundle: Path, tmp_path: Path) -> None:
    """Run a copy of the bundle as a new user would: no PYTHONPATH, empty HOME.

    The copy is outside the checkout, so a file the bundle lacks cannot be
    found in the source tree. As root the copy sits in pytest's mode 0700
    folder, so the embedded database also has to copy its server binaries
    to where the omr-desktop account can run them.
    """
    installed = tmp_path / "installed" / "omr-desktop"
    shutil.copytree(bundle, installed, symlinks=True)
    home = tmp_path / "home"
    home.mkdir()
    unset = ("PYTHONPATH", "PYTHONHOME", "QT_QPA_PLATFORM", "OMR_DATA_DIR")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in unset and not key.startswith(("OMR_", "PG"))
    }
    env["HOME"] = str(home)

    done = subprocess.run(
        [str(installed / "omr-desktop"), "self-test"],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=600,
        check=False,
    )

    output = done.stdout + done.stderr
    assert not installed.is_relative_to(REPO)
    assert done.returncode == 0, output
    assert "self-test passed" in done.stdout, output
    assert "measuring kernels: compiled" in done.stdout, output
    assert str(REPO) not in done.stdout, output
    assert list(home.iterdir()) == [], "the self-test wrote into HOME"
