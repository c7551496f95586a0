"""A console result, bounded in rows *and bytes*: per cell, per row and per page.

The database side already keeps cells short (see sqlconsole: SQLite's length limit and
`substr`, PostgreSQL's `left(…::text)` before a value leaves the server); here rows are
fetched in small batches and every value is cut to the cell limit, every row to the row
limit, and fetching stops once the page limit is reached. So the memory a result takes
is bounded by the limits, whatever the query asked for, and the page and the CSV export
are built from the same bounded rows.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

CELL_MAX_CHARS = 10_000  # a value longer than this is shown cut, ending in CUT_MARK
ROW_MAX_BYTES = 100_000  # the cells of one row together
MAX_COLUMNS = 100  # more columns than this are refused (each may take a cell's bytes)
BATCH_BYTES = 2_000_000  # rows are fetched in batches of at most about this many bytes
CUT_MARK = "…"


@dataclass(frozen=True)
class Limits:
    rows: int
    seconds: float
    page_bytes: int


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool  # more rows than the row limit
    row_limit: int
    elapsed_ms: float
    notes: list[str] = field(default_factory=list)  # what was cut, in sentences

    @property
    def cut(self) -> bool:
        return self.truncated or bool(self.notes)


def batch_size(columns: int) -> int:
    """Rows per fetch so that one batch of full-length cells stays near BATCH_BYTES."""
    return max(1, min(100, BATCH_BYTES // (max(1, columns) * (CELL_MAX_CHARS + 1) * 4)))


def collect(
    names: Sequence[str], fetch: Callable[[int], Sequence[Sequence[Any]]], limits: Limits, started: float
) -> QueryResult:
    """Fetch and bound rows until the row or byte limit; `fetch(n)` returns up to n rows."""
    result = QueryResult(list(names), [], False, limits.rows, 0.0)
    notes: set[str] = set()
    page = _Page(limits.page_bytes)
    size = batch_size(len(names))
    full = not names
    while not full:
        batch = fetch(size)
        if not batch:
            break
        for raw in batch:
            if len(result.rows) == limits.rows:
                result.truncated = full = True
                break
            row, row_bytes = bounded_row(raw, notes)
            if not page.fits(row_bytes):
                notes.add(
                    f"Stopped at {_kb(limits.page_bytes)} of results: only the first {len(result.rows)} "
                    "rows are shown; select fewer or shorter columns, or add LIMIT."
                )
                full = True
                break
            result.rows.append(row)
    result.notes = sorted(notes)
    result.elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    return result


@dataclass
class _Page:
    limit: int
    used: int = 0

    def fits(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True


def bounded_row(raw: Sequence[Any], notes: set[str]) -> tuple[list[Any], int]:
    """The row as shown, every cell within CELL_MAX_CHARS and all within ROW_MAX_BYTES."""
    row: list[Any] = []
    budget = ROW_MAX_BYTES
    for value in raw:
        shown = display_value(value)
        if isinstance(shown, str):
            shown = _cut(
                shown, CELL_MAX_CHARS, notes, f"Values longer than {CELL_MAX_CHARS:,} characters are cut (…)."
            )
            size = len(shown.encode("utf-8", "replace"))
            if size > budget:
                shown = _cut(
                    shown, max(0, budget // 4), notes, f"Rows longer than {_kb(ROW_MAX_BYTES)} are cut (…)."
                )
                size = len(shown.encode("utf-8", "replace"))
        else:
            size = 16
        budget = max(0, budget - size)
        row.append(shown)
    return row, ROW_MAX_BYTES - budget


def _cut(text: str, chars: int, notes: set[str], note: str) -> str:
    if len(text) <= chars:
        return text
    notes.add(note)
    return text[:chars] + CUT_MARK


def _kb(size: int) -> str:
    return f"{size / 1_000_000:g} MB" if size >= 1_000_000 else f"{size / 1000:g} kB"


def display_value(value: Any) -> Any:
    """A value as the page and CSV show it (JSON-friendly)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return float(value) if value == value.to_integral_value() or abs(value) < 1e15 else str(value)
    if isinstance(value, datetime | date):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    return str(value)


def to_csv(result: QueryResult) -> str:
    """The rows as CSV. Text that a spreadsheet would run as a formula is quoted with '."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow([_csv_cell(v) for v in row])
    return out.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value
