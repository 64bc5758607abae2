"""Load the compiled inner loops of measuring, if this install has them.

`omr_desktop/engine/_kernels.c` computes the box scores of the shift search
and each bubble's sampled grey level without the per-template index arrays
that the numpy code gathers through. Fills are identical to the numpy
path's, bit for bit, on every demo and real sample sheet the tests compare.
Shift scores may differ in their last bits (another summation order), so
the two paths could choose different shifts only where two shifts score
equally to about 1e-14.

Installing the package (``pip install .`` or ``pip install -e .``) compiles
the module with the machine's C compiler. Without a compiler the install
still succeeds and the engine measures with numpy alone, which is slower.
`compiled` is then None and the engine logs one warning. Setting the
environment variable ``OMR_DISABLE_KERNELS=1`` also selects the numpy path,
for comparing the two.
"""

from __future__ import annotations

import importlib
import logging
import os
import types

logger = logging.getLogger(__name__)

DISABLE_VARIABLE = "OMR_DISABLE_KERNELS"

compiled: types.ModuleType | None = None
if os.environ.get(DISABLE_VARIABLE) == "1":
    logger.info("%s=1: measuring with numpy only", DISABLE_VARIABLE)
else:
    try:
        compiled = importlib.import_module("omr_desktop.engine._kernels")
    except ImportError as exc:  # pragma: no cover - depends on the install
        logger.warning(
            "compiled measuring kernels not found (%s); measuring with numpy "
            "only. Reinstall with a C compiler present to build them.",
            exc,
        )
