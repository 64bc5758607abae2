"""Compile the engine's C kernels while hatchling builds a wheel.

Hatchling builds pure-Python wheels by itself, so this hook compiles
`omr_desktop/engine/_kernels.c` with setuptools' `build_ext`, which finds the
platform's compiler and flags. The module is written next to its source,
so that an editable install (``pip install -e .``) imports it from the source
tree, and is added to a regular wheel, which becomes platform-specific.

Without a working C compiler the build prints a warning and produces a
pure-Python wheel; the engine then measures with numpy alone.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

MODULE = "omr_desktop.engine._kernels"
SOURCE = "omr_desktop/engine/_kernels.c"


class KernelBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Build `omr_desktop.engine._kernels` for the wheel and editable targets."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Compile the extension and add it to the wheel being built."""
        if self.target_name != "wheel":
            return
        try:
            built = _compile(Path(self.root))
        except Exception as exc:  # noqa: BLE001 - any compiler failure is reported
            # A module built earlier from other sources must not stay in use.
            for stale in (Path(self.root) / "omr_desktop" / "engine").glob(
                "_kernels.*"
            ):
                if stale.suffix in (".so", ".pyd"):
                    stale.unlink()
            self.app.display_warning(
                f"omr-desktop: failed to compile {SOURCE} ({exc}); installing "
                "without the compiled kernels, so measuring runs on numpy alone "
                "and is slower"
            )
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(built)] = built.relative_to(
                self.root
            ).as_posix()


def _compile(root: Path) -> Path:
    """Compile the kernels into the source tree and return the module's path."""
    from setuptools import Distribution, Extension

    # -O3 vectorises the counting loop of select_kth. -ffp-contract=off keeps
    # any a*b+c as two roundings, as numpy computes it, so that no fused
    # multiply-add can make the kernels differ from the numpy code.
    flags = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]
    extension = Extension(
        MODULE, sources=[str(root / SOURCE)], extra_compile_args=flags
    )
    with tempfile.TemporaryDirectory() as scratch:
        distribution = Distribution({"name": "omr-desktop", "ext_modules": [extension]})
        command = distribution.get_command_obj("build_ext")
        command.build_lib = str(Path(scratch) / "lib")
        command.build_temp = str(Path(scratch) / "temp")
        command.ensure_finalized()
        command.run()
        compiled = Path(command.get_ext_fullpath(MODULE))
        target = root / "omr_desktop" / "engine" / compiled.name
        # Replaced by a rename, so that a process that has the old module
        # loaded keeps its mapped file intact.
        staged = target.with_name(target.name + ".new")
        shutil.copyfile(compiled, staged)
        os.replace(staged, target)
    return target
