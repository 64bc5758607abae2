"""Check request bodies, task ids and ``Last-Event-ID`` before any work is done.

Rules for ``POST /sheets/reprocess``:

- The body must be ``Content-Type: application/json`` (415 otherwise), at
  most ``MAX_BODY_BYTES`` (413), valid UTF-8 JSON (400) and an object with
  ``sheet_ids`` and ``profile_id`` (400). Other keys are ignored.
- ``sheet_ids`` is a non-empty array of positive integers no larger than
  PostgreSQL's ``bigint``. Strings, floats (even ``12.0``), booleans, null,
  negative numbers and integers out of that range (of any length) are
  rejected with 400, naming the first bad element.
- An array longer than ``MAX_SHEETS_PER_TASK`` elements is rejected with 413
  before its elements are checked, whether or not it contains duplicates.
- Duplicate ids are dropped, keeping the first occurrence's order: the
  selection is a set of sheets, and the GUI and the command line treat it
  the same way.
- ``profile_id`` is a positive integer no larger than PostgreSQL's
  ``integer``.

Unknown profiles and sheets (404) and overlaps with a queued or running task
(409) are found by the task manager, which reads the database.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, NoReturn

from aiohttp import web

from omr_desktop.db.id_range import MAX_PROFILE_ID, MAX_SHEET_ID
from omr_desktop.pipeline.task_manager import MAX_SHEETS_PER_TASK
from omr_desktop.server.errors import ApiError

# 100,000 sheet ids of 12 digits are 1.3 MB of JSON; 10 MB leaves room for
# whitespace and the other fields while still bounding memory per request.
MAX_BODY_BYTES = 10 * 1024 * 1024

# An integer with more digits than the largest id is out of range for every
# field. Python's int() rejects more than 4,300 digits (its
# sys.get_int_max_str_digits() default) with a message about that limit, so
# such numbers are kept as their length instead of being converted.
MAX_ID_DIGITS = len(str(MAX_SHEET_ID))


@dataclass(frozen=True)
class _LongInteger:
    """A JSON integer longer than MAX_ID_DIGITS digits, kept as its length."""

    digits: int


@dataclass(frozen=True)
class ReprocessSelection:
    """A checked reprocess request: sheet ids without duplicates, in order."""

    sheet_ids: tuple[int, ...]
    profile_id: int


async def read_json_body(request: web.Request) -> Any:
    """Read and decode the JSON body of ``request``.

    Raises:
        ApiError: 415 for another content type, 413 for a body over
            MAX_BODY_BYTES, 400 for a body that is not JSON.
    """
    if request.content_type != "application/json":
        # aiohttp reports a missing header as application/octet-stream.
        received = request.content_type if "Content-Type" in request.headers else "none"
        raise ApiError(415, f"Content-Type must be application/json, not {received}.")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        _raise_too_large()
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        _raise_too_large()
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_constant=_reject_constant,
            parse_int=_parse_json_int,
        )
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}.") from None


def _raise_too_large() -> NoReturn:
    raise ApiError(
        413,
        f"The request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MB.",
    )


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _parse_json_int(text: str) -> int | _LongInteger:
    digits = len(text.lstrip("-"))
    if digits > MAX_ID_DIGITS:
        return _LongInteger(digits)
    return int(text)


def parse_reprocess_body(payload: Any) -> ReprocessSelection:
    """Check the decoded body of ``POST /sheets/reprocess``.

    Raises:
        ApiError: 400 for a missing or mistyped field or an empty selection,
            413 for more than MAX_SHEETS_PER_TASK ids.
    """
    if not isinstance(payload, dict):
        raise ApiError(
            400,
            "The request body must be a JSON object such as "
            '{"sheet_ids": [12345, 12346], "profile_id": 2}.',
        )
    missing = [key for key in ("sheet_ids", "profile_id") if key not in payload]
    if missing:
        raise ApiError(400, f"Missing field: {', '.join(missing)}.")
    sheet_ids = _parse_sheet_ids(payload["sheet_ids"])
    profile_id = _parse_profile_id(payload["profile_id"])
    return ReprocessSelection(sheet_ids, profile_id)


def _parse_sheet_ids(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ApiError(
            400,
            f"sheet_ids must be an array of positive integers, not {_kind(value)}.",
        )
    if len(value) > MAX_SHEETS_PER_TASK:
        raise ApiError(
            413,
            f"sheet_ids has {len(value):,} elements, more than one task takes "
            f"({MAX_SHEETS_PER_TASK:,}). Split the selection.",
        )
    if not value:
        raise ApiError(400, "sheet_ids is empty: give at least one sheet id.")
    for index, item in enumerate(value):
        if not _is_positive_int(item, MAX_SHEET_ID):
            raise ApiError(
                400,
                f"sheet_ids[{index}] is {_describe(item)}: "
                f"sheet ids are integers from 1 to {MAX_SHEET_ID}.",
            )
    return tuple(dict.fromkeys(value))


def _parse_profile_id(value: Any) -> int:
    if not _is_positive_int(value, MAX_PROFILE_ID):
        raise ApiError(
            400,
            f"profile_id is {_describe(value)}: profile ids are "
            f"integers from 1 to {MAX_PROFILE_ID}. GET /profiles lists them.",
        )
    result: int = value
    return result


def _is_positive_int(value: Any, maximum: int) -> bool:
    # bool is a subclass of int, and JSON true must not pass as sheet 1.
    return type(value) is int and 1 <= value <= maximum


def _describe(value: Any) -> str:
    if isinstance(value, _LongInteger):
        return f"an integer of {value.digits:,} digits, out of range"
    return f"{json.dumps(value)} ({_kind(value)})"


def _kind(value: Any) -> str:
    kinds = {
        bool: "a boolean",
        int: "an integer",
        float: "a number with a fraction or exponent",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return kinds.get(type(value), type(value).__name__)


def parse_task_id(text: str) -> str:
    """Return the canonical form of a task id.

    Raises:
        ApiError: 404 when ``text`` is not a UUID, since no task can have
            that id.
    """
    try:
        return str(uuid.UUID(text))
    except ValueError:
        quoted = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"
        raise ApiError(
            404,
            f"No task {quoted!r}: task ids are UUIDs such as "
            "c8f2b3c4-0000-4000-8000-000000000000.",
        ) from None


def parse_last_event_id(request: web.Request) -> int:
    """Return the ``Last-Event-ID`` header as an int, 0 when absent or empty.

    Raises:
        ApiError: 400 when the header is not a non-negative integer; this
            server only sends such ids.
    """
    text = request.headers.get("Last-Event-ID", "").strip()
    if not text:
        return 0
    quoted = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"
    if not text.isascii() or not text.isdigit():
        raise ApiError(
            400,
            f"Last-Event-ID must be an event id this server sent (an integer), "
            f"not {quoted!r}.",
        )
    if len(text) > 10:
        raise ApiError(
            400,
            f"Last-Event-ID {quoted} is out of range: this server sends event "
            "ids below 10,000,000,000. Reconnect without it to get every event.",
        )
    return int(text)


# Characters of a rejected value that an error message repeats.
_SHOWN_CHARS = 40
