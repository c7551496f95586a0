"""Console results are bounded in bytes — per cell, per row and per page — on the page and in
the CSV, and the web process's memory stays bounded while a huge result is cut or refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from bot.web.dashboard.auth import create_admin
from bot.web.dashboard.sqlconsole import QueryFailed, run_query
from bot.web.dashboard.sqlresult import CELL_MAX_CHARS, CUT_MARK, MAX_COLUMNS, ROW_MAX_BYTES, to_csv
from core.settings import Settings
from tests.bot.web.dashboard.seed import ADMIN, PASSWORD, login, seed
from tests.bot.web.dashboard.serving import serve

MB = 1_000_000
X90 = "x" * 90


def _rows(n: int) -> str:
    """A recursive CTE of n numbered rows (both databases)."""
    return f"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < {n}) "


def _agg(settings: Settings, value: str) -> str:
    return f"group_concat({value}, '')" if settings.is_sqlite else f"string_agg({value}, '')"


def test_a_long_value_is_cut_in_the_page_and_the_csv(console_db: Settings) -> None:
    long_text = _agg(console_db, "'abcdefghij'")  # 30,000 characters
    sql = _rows(3000) + f"SELECT {long_text} AS s, 'short' AS t FROM r"
    result = run_query(console_db, sql)
    (long, short) = result.rows[0]
    assert long == "abcdefghij" * (CELL_MAX_CHARS // 10) + CUT_MARK and short == "short"
    assert any("cut" in note for note in result.notes)
    assert len(to_csv(result)) < CELL_MAX_CHARS + 100


def test_a_wide_row_is_cut_to_the_row_limit(console_db: Settings) -> None:
    cell = _agg(console_db, "'0123456789'")
    columns = ", ".join(f"{cell} AS c{i}" for i in range(15))  # 15 × 10,000 characters
    result = run_query(console_db, _rows(1000) + f"SELECT {columns} FROM r")
    row = result.rows[0]
    assert sum(len(str(v).encode()) for v in row) <= ROW_MAX_BYTES + 15 * len(CUT_MARK.encode())
    assert row[0] == "0123456789" * 1000 and row[-1] == CUT_MARK
    assert any(f"{ROW_MAX_BYTES // 1000:g} kB" in note for note in result.notes)


def test_the_page_stops_at_the_byte_limit(console_db: Settings) -> None:
    settings = console_db.model_copy(update={"console_byte_limit": 100_000})
    wide = _rows(300) + "SELECT n, '" + "y" * 4000 + "' AS s FROM r ORDER BY n"
    result = run_query(settings, wide)
    assert 0 < len(result.rows) < 300 and not result.truncated
    assert [r[0] for r in result.rows] == list(range(1, len(result.rows) + 1))
    assert any("Stopped at 100 kB" in note for note in result.notes)
    assert len(to_csv(result).encode()) <= 100_000 + 10 * len(result.rows)


def test_too_many_columns_is_a_sentence(console_db: Settings) -> None:
    columns = ", ".join(f"{i} AS c{i}" for i in range(MAX_COLUMNS + 1))
    with pytest.raises(QueryFailed, match=f"at most {MAX_COLUMNS}"):
        run_query(console_db, f"SELECT {columns}")


def test_sqlite_refuses_to_build_a_value_over_its_limit(sqlite_settings: Settings) -> None:
    sql = _rows(20000) + f"SELECT group_concat('{X90}', '') FROM r"  # 1.8 MB
    with pytest.raises(QueryFailed, match="over 1 MB"):
        run_query(sqlite_settings, sql)


# -- the web process ----------------------------------------------------------------------

HUGE = {
    # finding 4 as reported (printf / repeat are not on the console's list)…
    "sqlite": [
        "SELECT printf('%.*c', 20000000, 'x') FROM jobs LIMIT 5",
        # …and what the allowed functions reach: 40 values of 900 kB, then 10 of 5 MB
        _rows(400000) + f"SELECT n % 40 AS g, group_concat('{X90}', '') AS s FROM r GROUP BY n % 40",
        _rows(2000000) + f"SELECT n % 10 AS g, group_concat('{X90}', '') AS s FROM r GROUP BY n % 10",
    ],
    "postgres": [
        "SELECT repeat('x', 20000000) FROM jobs LIMIT 5",
        f"SELECT n % 40 AS g, string_agg('{X90}', '') AS s FROM generate_series(1, 400000) AS t(n) GROUP BY n % 40",
        f"SELECT n % 10 AS g, string_agg('{X90}', '') AS s FROM generate_series(1, 2000000) AS t(n) GROUP BY n % 10",
    ],
}
RSS_BOUND = 150 * MB  # over the warmed-up server's peak; the report measured +680 MB


def _peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


@contextmanager
def _rss_sampler(process: psutil.Process) -> Iterator[list[int]]:
    """Samples the process's RSS (psutil) while the block runs; yields the samples."""
    samples: list[int] = [process.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            samples.append(process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize("console_db", ["sqlite", "postgres-role"], indirect=True)
def test_web_process_memory_stays_bounded_on_huge_results(console_db: Settings, tmp_path: Path) -> None:
    create_admin(console_db, ADMIN, PASSWORD)
    seed(console_db)
    dialect = "sqlite" if console_db.is_sqlite else "postgres"
    with (
        serve(console_db, tmp_path, DREAMBOT_CONSOLE_TIME_LIMIT="120") as server,
        httpx.Client(base_url=server.url, timeout=180) as client,
    ):
        token = login(client)  # type: ignore[arg-type]
        process = psutil.Process(server.proc.pid)
        for warm in ("SELECT id, status FROM jobs", "SELECT nope"):  # every code path once
            client.post("/admin/sql", data={"csrf_token": token, "sql": warm})
            client.post("/admin/sql/csv", data={"csrf_token": token, "sql": warm})
        baseline = max(_peak_rss(process.pid), process.memory_info().rss)
        with _rss_sampler(process) as samples:
            for sql in HUGE[dialect]:
                for path in ("/admin/sql", "/admin/sql/csv"):
                    response = client.post(path, data={"csrf_token": token, "sql": sql})
                    assert response.status_code in (200, 400), (sql, response.status_code)
                    assert len(response.content) < 12 * MB
                    csv = response.headers["content-type"].startswith("text/csv")
                    said = response.headers.get("x-dreambot-cut", "") if csv else response.text
                    if response.status_code == 200:
                        assert "cut" in said, sql  # the admin is told the values were cut
                    else:
                        assert "not available" in said or "over 1 MB" in said, sql
        peak = max([*samples, _peak_rss(process.pid)])
    assert peak - baseline < RSS_BOUND, f"the web process grew by {(peak - baseline) / MB:.0f} MB"
