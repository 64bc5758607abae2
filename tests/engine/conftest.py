"""Shared fixtures of the engine tests: the demo template and profiles."""

from __future__ import annotations

import numpy as np
import pytest

from omr_desktop.engine.profile import BUILTIN_PROFILES, ProfileSettings
from omr_desktop.engine.synthetic import demo_template
from omr_desktop.engine.template import Template


@pytest.fixture(scope="session")
def demo() -> Template:
    """The 150 x 5 demo template (built once; its caches are shared)."""
    return demo_template()


@pytest.fixture
def rng() -> np.random.Generator:
    """A generator with a fixed seed, so each test's sheets are the same."""
    return np.random.default_rng(31337)


@pytest.fixture(params=[1, 2, 3], ids=["Default", "Sensitive", "Strict"])
def builtin(request: pytest.FixtureRequest) -> ProfileSettings:
    """Each built-in profile's settings in turn."""
    return BUILTIN_PROFILES[request.param].settings
