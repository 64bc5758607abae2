"""Counts and id lists in user-facing messages, in singular or plural."""

from __future__ import annotations

from collections.abc import Sequence

# A message names at most this many ids and counts the rest ("and 5 more"),
# so that an error about 100,000 sheets stays one readable line.
SHOWN_IDS = 20


def noun(count: int, singular: str, plural: str | None = None) -> str:
    """Return ``singular`` when ``count`` is 1, else the plural (``singular + 's'``)."""
    if count == 1:
        return singular
    return plural if plural is not None else singular + "s"


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """Return the count with its noun, such as "1 sheet" or "2,500 sheets"."""
    return f"{count:,} {noun(count, singular, plural)}"


def id_list(ids: Sequence[object], limit: int = SHOWN_IDS) -> str:
    """Join the first ``limit`` ids with commas and count the rest.

    ``id_list([1, 2, 3], limit=2)`` returns "1, 2 and 1 more".
    """
    listed = ", ".join(str(i) for i in ids[:limit])
    rest = len(ids) - limit
    return f"{listed} and {rest:,} more" if rest > 0 else listed
