"""Read the detection profiles an editor can reprocess sheets with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg


@dataclass(frozen=True)
class ProfileInfo:
    """One row of the ``profiles`` table.

    Attributes:
        builtin: True for the three profiles the schema ships (ids 1 to 3).
        settings: the profile's settings as stored, with the ``decision``
            and ``measurement`` sections of the engine's profile format.
    """

    id: int
    name: str
    description: str
    builtin: bool
    # A dict cannot be hashed, so the settings take no part in the hash.
    settings: dict[str, Any] = field(default_factory=dict, hash=False)


def list_profiles(conn: psycopg.Connection) -> list[ProfileInfo]:
    """Return every profile, built-ins first, each group in id order."""
    rows = conn.execute(
        """
        SELECT id, name, description, builtin, settings
        FROM profiles
        ORDER BY builtin DESC, id
        """
    ).fetchall()
    return [
        ProfileInfo(
            id=int(row[0]),
            name=row[1],
            description=row[2],
            builtin=bool(row[3]),
            settings=dict(row[4] or {}),
        )
        for row in rows
    ]
