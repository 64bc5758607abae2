"""The database's built-in profiles match the engine's."""

from __future__ import annotations

import psycopg
import pytest

from omr_desktop.engine import BUILTIN_PROFILES, parse_profile_settings

pytestmark = pytest.mark.db


def test_builtin_profiles_match_engine(db: psycopg.Connection) -> None:
    rows = db.execute(
        "SELECT id, name, description, settings FROM profiles WHERE builtin ORDER BY id"
    ).fetchall()

    assert [r[0] for r in rows] == sorted(BUILTIN_PROFILES)
    for profile_id, name, description, settings in rows:
        builtin = BUILTIN_PROFILES[profile_id]
        assert name == builtin.name
        assert description == builtin.description
        assert parse_profile_settings(settings) == builtin.settings, name
