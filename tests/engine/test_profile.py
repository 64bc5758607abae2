"""Profile settings: validation, serialisation, hashes and built-ins."""

from __future__ import annotations

import json

import pytest

from omr_desktop.engine import profile as profile_module
from omr_desktop.engine.profile import (
    BUILTIN_PROFILES,
    ProfileError,
    ProfileSettings,
    measurement_hash,
    parse_profile_settings,
)


def test_builtins_are_default_sensitive_strict() -> None:
    names = {pid: p.name for pid, p in BUILTIN_PROFILES.items()}
    assert names == {1: "Default", 2: "Sensitive", 3: "Strict"}
    assert all(p.id == pid for pid, p in BUILTIN_PROFILES.items())


def test_builtins_share_measurement() -> None:
    hashes = {measurement_hash(p.settings) for p in BUILTIN_PROFILES.values()}
    assert len(hashes) == 1


def test_sensitive_threshold_is_lower_than_default() -> None:
    default = BUILTIN_PROFILES[1].settings.decision
    sensitive = BUILTIN_PROFILES[2].settings.decision
    strict = BUILTIN_PROFILES[3].settings.decision
    assert sensitive.min_fill < default.min_fill < strict.min_fill


def test_round_trip_through_json() -> None:
    for profile in BUILTIN_PROFILES.values():
        text = json.dumps(profile.settings.to_dict())
        assert parse_profile_settings(json.loads(text)) == profile.settings


def test_missing_keys_take_default_values() -> None:
    settings = parse_profile_settings({"decision": {"min_fill": 0.3}})
    assert settings.decision.min_fill == 0.3
    assert settings.measurement == ProfileSettings().measurement


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"colour": {}}, "colour"),
        ({"decision": {"min_fil": 0.3}}, "decision.min_fil"),
        ({"decision": {"min_fill": 1.5}}, "decision.min_fill"),
        ({"decision": {"review_threshold": -0.1}}, "decision.review_threshold"),
        ({"decision": {"multi_mark_policy": "first"}}, "decision.multi_mark_policy"),
        ({"decision": {"flag_blank_blocks": 1}}, "decision.flag_blank_blocks"),
        ({"measurement": {"blur_ksize": 4}}, "measurement.blur_ksize"),
        ({"measurement": {"blur_ksize": 2.5}}, "measurement.blur_ksize"),
        ({"measurement": {"sample_inset": "wide"}}, "measurement.sample_inset"),
        ({"measurement": {"levels_low": 0.8, "levels_high": 0.7}}, "levels_low"),
        ({"decision": {"erased_high": 0.5, "min_fill": 0.4}}, "erased_high"),
    ],
)
def test_invalid_setting_names_the_key(data: dict, key: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile_settings(data)
    assert key in str(info.value)


def test_measurement_hash_ignores_decision() -> None:
    a = parse_profile_settings({"decision": {"min_fill": 0.3}})
    b = parse_profile_settings({"decision": {"min_fill": 0.6}})
    assert measurement_hash(a) == measurement_hash(b)


def test_measurement_hash_changes_with_measurement() -> None:
    a = parse_profile_settings({})
    b = parse_profile_settings({"measurement": {"blur_ksize": 3}})
    assert measurement_hash(a) != measurement_hash(b)


def test_measurement_hash_changes_with_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fills measured by older code must not pass for the current code's.
    before = measurement_hash(ProfileSettings())
    monkeypatch.setattr(
        profile_module, "MEASUREMENT_VERSION", profile_module.MEASUREMENT_VERSION + 1
    )
    profile_module._hash_measurement.cache_clear()
    try:
        after = measurement_hash(ProfileSettings())
    finally:
        monkeypatch.undo()
        profile_module._hash_measurement.cache_clear()
    assert after != before
    assert measurement_hash(ProfileSettings()) == before


def test_measurement_hash_is_stable() -> None:
    # A stored hash must stay valid across runs and versions of Python;
    # this value changes only when the default measurement settings or
    # MEASUREMENT_VERSION change.
    digest = measurement_hash(ProfileSettings())
    assert digest == measurement_hash(parse_profile_settings({}))
    assert len(digest) == 16
    int(digest, 16)
