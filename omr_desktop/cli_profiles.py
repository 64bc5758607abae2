"""The ``omr-desktop profiles`` command: list the detection profiles."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from omr_desktop.db.database import Database
from omr_desktop.db.profiles import ProfileInfo, list_profiles

# Hex digits of the measurement hash shown per profile: enough to tell a
# handful of measurement setups apart at a glance.
SHOWN_HASH_DIGITS = 8

HEADERS = ("ID", "NAME", "KIND", "MEASUREMENT", "DESCRIPTION")


def add_profiles_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``profiles``."""
    cmd = commands.add_parser(
        "profiles",
        help="list the detection profiles that 'reprocess --profile' takes",
        description="List the detection profiles of the database in use: id, "
        "name, built-in or added, a key of the measurement settings, and "
        "description. Profiles with the same measurement key measure bubbles "
        "alike and differ only in their decisions, so 'reprocess --redecide' "
        "can switch sheets between them without reading the images again.",
    )
    cmd.set_defaults(handler=run_profiles)


def run_profiles(args: argparse.Namespace) -> int:
    with Database() as database, database.connect() as conn:
        profiles = list_profiles(conn)
    if not profiles:
        print("The database has no profiles.")
        return 0
    print(format_profiles(profiles))
    return 0


def format_profiles(profiles: Sequence[ProfileInfo]) -> str:
    """Format the profiles as a table with a header row, one profile a line."""
    rows = [HEADERS] + [_row(p) for p in profiles]
    # The description is last and left unpadded, so long ones do not widen
    # every line.
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _row(profile: ProfileInfo) -> tuple[str, str, str, str, str]:
    return (
        str(profile.id),
        profile.name,
        "built-in" if profile.builtin else "added",
        _measurement_key(profile),
        profile.description,
    )


def _measurement_key(profile: ProfileInfo) -> str:
    from omr_desktop.engine.profile import measurement_hash, parse_profile_settings

    try:
        settings = parse_profile_settings(profile.settings)
    except ValueError:
        # The reprocess rejects such a profile with the reason.
        return "invalid"
    return measurement_hash(settings)[:SHOWN_HASH_DIGITS]
