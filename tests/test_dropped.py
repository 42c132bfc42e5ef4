"""What ingestion dropped, and why: the drop log on disk and ``GET /api/stats/dropped``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mallard.ingest.dropped import MAX_USER_AGENTS, OTHER_AGENTS, DropLog, report, report_result
from mallard.query.engine import QueryEngine
from mallard.storage.layout import DataLayout
from tests.conftest import BROWSER_UA, SEED_EVENT

DAY = 86_400.0
MONDAY = 20_000 * DAY  # 2024-10-04, 00:00 UTC
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
BINGBOT = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
BOT_IP = "198.51.100.23"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def layout_in(tmp_path: Path) -> DataLayout:
    layout = DataLayout(tmp_path / "data")
    layout.create()
    return layout


def rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


async def test_drop_log_writes_running_totals_per_site_and_day(tmp_path: Path) -> None:
    layout = layout_in(tmp_path)
    drops = DropLog(layout, "writer-a", clock=Clock(MONDAY + 3600))
    drops.record("bot", "example.com", GOOGLEBOT)
    drops.record("bot", "example.com", GOOGLEBOT)
    drops.record("invalid", "example.com")
    drops.record("rate_limited", "other.org", count=3)
    await drops.persist()
    path = drops.path("example.com", 20_000)
    assert path == layout.dropped / "site_id=example.com/date=2024-10-04/writer-a.parquet"
    assert rows(path) == [
        {"reason": "bot", "user_agent": GOOGLEBOT, "events": 2},
        {"reason": "invalid", "user_agent": None, "events": 1},
    ]
    other = drops.path("other.org", 20_000)
    assert rows(other) == [{"reason": "rate_limited", "user_agent": None, "events": 3}]

    drops.record("bot", "example.com", BINGBOT)
    modified = other.stat().st_mtime_ns
    await drops.persist()  # only the changed day is written again, with the totals
    assert rows(path) == [
        {"reason": "bot", "user_agent": GOOGLEBOT, "events": 2},
        {"reason": "bot", "user_agent": BINGBOT, "events": 1},
        {"reason": "invalid", "user_agent": None, "events": 1},
    ]
    assert other.stat().st_mtime_ns == modified
    assert sorted(p.name for p in layout.dropped.rglob("*") if p.is_file()) == [
        "writer-a.parquet",
        "writer-a.parquet",
    ]
    assert not any(layout.events.rglob("*.parquet"))  # events/ holds events only
    assert not any(layout.tmp.iterdir())


async def test_finished_days_leave_memory_once_written(tmp_path: Path) -> None:
    clock = Clock(MONDAY + DAY - 1)
    drops = DropLog(layout_in(tmp_path), "writer-a", clock=clock)
    drops.record("origin", "example.com")
    clock.now += 2  # past midnight
    drops.record("origin", "example.com")
    assert set(drops.held("example.com", 0, 30_000)) == {20_000, 20_001}
    await drops.persist()
    assert set(drops.held("example.com", 0, 30_000)) == {20_001}
    for day in (20_000, 20_001):
        assert rows(drops.path("example.com", day))[0]["events"] == 1


def test_bot_user_agents_per_day_are_bounded() -> None:
    drops = DropLog(DataLayout(Path("/nonexistent")), "writer-a", clock=Clock(MONDAY))
    for index in range(MAX_USER_AGENTS + 3):
        drops.record("bot", "example.com", f"crawler/{index}")
    drops.record("bot", "example.com", "x" * 5000)
    counts = drops.held("example.com", 20_000, 20_000)[20_000]
    assert len(counts) == MAX_USER_AGENTS + 1
    assert counts[("bot", OTHER_AGENTS)] == 4
    assert counts[("bot", "crawler/0")] == 1


def test_report_result_lists_days_with_drops_and_every_reason() -> None:
    monday, tuesday = dt.date(2024, 10, 4), dt.date(2024, 10, 5)
    result = report_result(
        [(monday, "bot", 5), (monday, "invalid", 1), (tuesday, "origin", 2)],
        [(GOOGLEBOT, 4), (BINGBOT, 1)],
    )
    zero = {"invalid": 0, "bot": 0, "rate_limited": 0, "origin": 0, "back_pressure": 0}
    assert result == {
        "total": 8,
        "reasons": {**zero, "bot": 5, "invalid": 1, "origin": 2},
        "days": [
            {"date": "2024-10-04", **zero, "bot": 5, "invalid": 1},
            {"date": "2024-10-05", **zero, "origin": 2},
        ],
        "bots": [{"user_agent": GOOGLEBOT, "events": 4}, {"user_agent": BINGBOT, "events": 1}],
    }


async def test_report_sums_every_writer_with_our_unwritten_counts(tmp_path: Path) -> None:
    layout = layout_in(tmp_path)
    ours = DropLog(layout, "writer-a", clock=Clock(MONDAY + 60))
    theirs = DropLog(layout, "writer-b", clock=Clock(MONDAY + 120))
    ours.record("bot", "example.com", GOOGLEBOT, count=2)
    await ours.persist()
    ours.record("bot", "example.com", GOOGLEBOT)  # not written yet: supersedes our file
    theirs.record("bot", "example.com", BINGBOT, count=5)
    theirs.record("invalid", "example.com")
    await theirs.persist()
    theirs.record("invalid", "example.com")  # another process's memory: not visible
    ours.record("bot", "elsewhere.org", GOOGLEBOT)
    engine = QueryEngine(layout)
    try:
        start = dt.datetime(2024, 10, 4, tzinfo=dt.UTC)
        answer = await report(
            engine, ours, "example.com", start, start + dt.timedelta(days=1), bots=10
        )
        assert answer["total"] == 9
        assert answer["reasons"]["bot"] == 8
        assert answer["days"] == [
            {"date": "2024-10-04", "invalid": 1, "bot": 8, "rate_limited": 0, "origin": 0,
             "back_pressure": 0},
        ]  # fmt: skip
        assert answer["bots"] == [
            {"user_agent": BINGBOT, "events": 5},
            {"user_agent": GOOGLEBOT, "events": 3},
        ]
        later = start + dt.timedelta(days=1)
        empty = await report(engine, None, "example.com", later, later + dt.timedelta(days=7), 10)
        assert (empty["total"], empty["days"], empty["bots"]) == (0, [], [])
        assert empty["date_range"] == ["2024-10-05", "2024-10-11"]
    finally:
        engine.close()


# --- over HTTP ---


async def dropped_report(server: Any, **params: str) -> dict[str, Any]:
    query = {"site_id": "example.com", "period": "day", **params}
    response = await server.client.get(f"{server.url}/api/stats/dropped", params=query)
    assert response.status_code == 200, response.text
    return response.json()


async def test_dropped_report_over_http_survives_a_restart(start_server: Any) -> None:
    settings = {"site_ids": ("example.com",), "rate_limit": 0.001, "rate_burst": 1}
    server = await start_server(**settings)
    post = server.post_event
    assert (await post(SEED_EVENT)).status_code == 202
    assert (await post(SEED_EVENT)).status_code == 429
    for agent in (GOOGLEBOT, GOOGLEBOT, BINGBOT):
        headers = {"User-Agent": agent, "X-Forwarded-For": BOT_IP}
        assert (await post(SEED_EVENT, headers=headers)).status_code == 202
    foreign = {"User-Agent": BROWSER_UA, "Origin": "https://evil.example"}
    assert (await post(SEED_EVENT, headers=foreign)).status_code == 403
    assert (await post({"d": "example.com", "n": "pageview"})).status_code == 422
    assert (await post({"d": "not a site", "n": "x", "u": "https://a.b/"})).status_code == 400

    today = dt.datetime.now(dt.UTC).date().isoformat()
    expected_reasons = {"invalid": 1, "bot": 3, "rate_limited": 1, "origin": 1, "back_pressure": 0}
    expected = {
        "site_id": "example.com",
        "date_range": [today, today],
        "total": 6,
        "reasons": expected_reasons,
        "days": [{"date": today, **expected_reasons}],
        "bots": [{"user_agent": GOOGLEBOT, "events": 2}, {"user_agent": BINGBOT, "events": 1}],
    }
    assert await dropped_report(server) == expected  # from memory: nothing written yet
    assert (await dropped_report(server, limit="1"))["bots"] == expected["bots"][:1]
    await server.stop()

    [written] = (server.data_dir / "dropped").rglob("*.parquet")
    assert pq.read_schema(written).names == ["reason", "user_agent", "events"]
    assert BOT_IP not in str(rows(written)) and "127.0.0.1" not in str(rows(written))
    assert [
        path.parent.parent.name for path in (server.data_dir / "events").rglob("*.parquet")
    ] == ["site_id=example.com"]
    restarted = await start_server(data_dir=server.data_dir, **settings)
    assert await dropped_report(restarted) == expected  # from the file
    assert (await dropped_report(restarted, period="custom", date="2020-01-01,2020-01-31"))[
        "total"
    ] == 0


async def test_dropped_route_errors(server: Any) -> None:
    url = f"{server.url}/api/stats/dropped"
    for params, message in [
        ({}, "site_id"),
        ({"site_id": "example.com", "limit": "0"}, "limit must be a whole number from 1 to 100"),
        ({"site_id": "example.com", "period": "custom"}, "period=custom needs date=START,END"),
    ]:
        response = await server.client.get(url, params=params)
        assert response.status_code == 400
        assert message in response.json()["error"]
