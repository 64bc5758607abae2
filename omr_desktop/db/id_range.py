"""The range of the id columns that requests name, for checks before a query."""

from __future__ import annotations

# sheets.id is a bigint and profiles.id an integer (0001_schema.sql), so
# no row has a larger id and a larger value is rejected before any query.
MAX_SHEET_ID = 2**63 - 1
MAX_PROFILE_ID = 2**31 - 1
