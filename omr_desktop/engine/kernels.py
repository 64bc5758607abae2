"""Load the compiled inner loops of measuring and deciding, if installed.

`omr_desktop/engine/_kernels.c` computes the field contrasts of the shift
search and each bubble's sampled grey level without the per-template index
arrays that the numpy code gathers through, and each field's decision
without some forty small numpy calls. Scores, shifts, fills and decisions
are identical to the numpy path's, bit for bit, and tests compare the two
on demo, real sample and random templates.

Installing the package (``pip install .`` or ``pip install -e .``) compiles
the module with the machine's C compiler. Without a compiler the install
still succeeds and the engine measures and decides with numpy alone, which
is slower.
`compiled` is then None, and the first sheet measured logs a warning
(pip itself shows the compiler's failure only with ``-v``). Setting the
environment variable ``OMR_DISABLE_KERNELS=1`` also selects the numpy path,
for comparing the two.
"""

from __future__ import annotations

import importlib
import logging
import os
import types
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

DISABLE_VARIABLE = "OMR_DISABLE_KERNELS"
# The version of _kernels.c these wrappers call. A module of another version
# (an old build left next to newer sources) is not used.
VERSION = 3


def _load() -> tuple[types.ModuleType | None, str]:
    """Return the compiled module, or None and why it is not used."""
    if os.environ.get(DISABLE_VARIABLE) == "1":
        return None, f"{DISABLE_VARIABLE}=1 is set"
    try:
        module = importlib.import_module("omr_desktop.engine._kernels")
    except ImportError as exc:
        return None, (
            f"the compiled module is not installed ({exc}); reinstall with a C "
            "compiler present to build it"
        )
    found = getattr(module, "VERSION", None)
    if found != VERSION:
        return None, (
            f"the compiled module {module.__file__} is version {found}, not "
            f"{VERSION}; reinstall to rebuild it"
        )
    return module, ""


compiled, unavailable_reason = _load()
_reported = False


def report_numpy_path() -> None:
    """Log once that measuring runs on numpy, and why.

    Called when a sheet is measured without the compiled kernels, so that
    the message reaches the log configured by then instead of going out at
    import time.
    """
    global _reported
    if _reported:
        return
    _reported = True
    if not unavailable_reason:
        # The module is installed, and a caller (a benchmark or a test)
        # switched it off on purpose.
        logger.info("Measuring with numpy only: compiled kernels switched off.")
    elif unavailable_reason.startswith(DISABLE_VARIABLE):
        logger.info("Measuring with numpy only: %s.", unavailable_reason)
    else:
        logger.warning(
            "Measuring with numpy only, about 0.9 ms a sheet slower: %s.",
            unavailable_reason,
        )


@contextmanager
def numpy_path() -> Iterator[None]:
    """Measure and decide on the numpy path inside the ``with`` block.

    For benchmarks and tests that compare the two paths. The switch is
    process-wide, so what other threads measure and decide meanwhile also
    runs on numpy.
    """
    global compiled
    saved = compiled
    compiled = None
    try:
        yield
    finally:
        compiled = saved
