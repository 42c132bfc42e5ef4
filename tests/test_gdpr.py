"""Erasure through the API and retention on a running server, on real Parquet and WAL."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import trio

from mallard.storage.layout import DataLayout
from mallard.storage.parquet import write_batch
from mallard.storage.schema import events_to_table
from tests.conftest import BROWSER_UA, read_events, start_process
from tests.factories import DAY_US, make_event

PASSWORD = "correct horse battery"
TODAY = dt.datetime.now(dt.UTC).date()


def log_in(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    answer = client.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
    return client


def post_events(url: str, site: str, count: int) -> None:
    with httpx.Client(headers={"User-Agent": BROWSER_UA}) as client:
        for index in range(count):
            body = {"d": site, "n": "pageview", "u": f"https://{site}/p/{index}"}
            assert client.post(f"{url}/api/event", json=body).status_code == 202


def test_erase_reaches_files_unflushed_events_and_the_wal(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    layout = DataLayout(data_dir)
    layout.create()
    old_day = (TODAY - dt.date(1970, 1, 1)).days - 3
    stored = [
        make_event(site_id=site, visitor_id=i, timestamp=(old_day + i % 2) * DAY_US + i)
        for site in ("a.example", "b.example")
        for i in range(20)
    ]
    write_batch(events_to_table(stored), layout, "imported")
    env = {"MALLARD_ADMIN_PASSWORD": PASSWORD, "MALLARD_FLUSH_INTERVAL": "3600"}
    server = start_process(data_dir, env=env)
    post_events(server.url, "a.example", 5)  # accepted: in the WAL and in memory only
    post_events(server.url, "b.example", 3)
    admin = log_in(server.url)
    first = (TODAY - dt.timedelta(days=3)).isoformat()
    answer = admin.delete(
        "/api/gdpr/erase", params={"site_id": "a.example", "from": first, "to": str(TODAY)}
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["rows_erased"], answer.json()["unwritten_rows_erased"]) == (25, 5)
    main = admin.get("/api/stats/main", params={"site_id": "a.example", "period": "7d"})
    assert main.json()["results"][0]["metrics"][0] == 0  # unflushed ones are gone too
    os.kill(server.process.pid, signal.SIGKILL)  # the WAL still holds the 5 events
    server.wait()
    again = start_process(data_dir, env=env)  # replays the WAL, without the erased
    again.signal(signal.SIGTERM)
    assert again.wait() == 0
    sites = sorted(event["site_id"] for event in read_events(data_dir))
    assert sites == ["b.example"] * 23


def test_erase_is_refused_without_the_right_to(tmp_path: Path) -> None:
    server = start_process(tmp_path / "data", env={"MALLARD_ADMIN_PASSWORD": PASSWORD})
    params = {"site_id": "a.example", "from": "2026-01-01", "to": "2026-01-02"}
    anonymous = httpx.delete(f"{server.url}/api/gdpr/erase", params=params)
    assert anonymous.status_code == 401
    admin = log_in(server.url)
    without_csrf = httpx.delete(
        f"{server.url}/api/gdpr/erase", params=params, cookies=admin.cookies
    )
    assert without_csrf.status_code == 403
    for bad, named in [
        ({"to": None}, "from and to"),
        ({"site_id": "no site"}, "site_id"),
        ({"timezone": "Mars/Olympus"}, "Mars/Olympus"),  # was a 500
        ({"to": "2026-01-02T12:00"}, "from/to must be two dates"),
    ]:
        query = {k: v for k, v in {**params, **bad}.items() if v is not None}
        refused = admin.delete("/api/gdpr/erase", params=query)
        assert refused.status_code == 400 and named in refused.json()["error"]
    twice = admin.delete("/api/gdpr/erase", params=[*params.items(), ("site_id", "b.example")])
    assert twice.status_code == 400
    assert twice.json()["error"] == "parameter site_id is given more than once"
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


def test_a_file_that_cannot_be_erased_from_is_named_and_does_not_stop_a_start(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    layout = DataLayout(data_dir)
    layout.create()
    day = (TODAY - dt.date(1970, 1, 1)).days - 3
    write_batch(
        events_to_table([make_event(site_id="a.example", timestamp=day * DAY_US)]), layout, "w"
    )
    broken = layout.partition("a.example", day) / "broken.parquet"
    pq.write_table(pa.table({"timestamp": ["not a time"]}), broken)
    env = {"MALLARD_ADMIN_PASSWORD": PASSWORD}
    server = start_process(data_dir, env=env)
    first = (TODAY - dt.timedelta(days=3)).isoformat()
    answer = log_in(server.url).delete(
        "/api/gdpr/erase", params={"site_id": "a.example", "from": first, "to": first}
    )
    assert answer.status_code == 503, answer.text
    assert "broken.parquet" in answer.json()["error"] and answer.json()["rows_erased"] == 1
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    again = start_process(data_dir, env=env)  # tries the erasure again, and serves
    assert httpx.get(f"{again.url}/health").status_code == 200
    again.signal(signal.SIGTERM)
    assert again.wait() == 0


def test_with_rounded_times_the_current_hour_waits_and_later_events_are_kept(
    tmp_path: Path,
) -> None:
    """Stored as HH:00, an event accepted after the erasure looks like one before it."""
    data_dir = tmp_path / "data"
    env = {
        "MALLARD_ADMIN_PASSWORD": PASSWORD,
        "MALLARD_ROUND_TIMESTAMPS": "true",
        "MALLARD_FLUSH_INTERVAL": "3600",
    }
    server = start_process(data_dir, env=env)
    post_events(server.url, "a.example", 2)
    admin = log_in(server.url)
    today = {"site_id": "a.example", "from": str(TODAY), "to": str(TODAY), "timezone": "UTC"}
    refused = admin.delete("/api/gdpr/erase", params=today)
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    assert refused.status_code == 409, refused.text
    assert f"erase up to to={hour.isoformat()} now" in refused.json()["error"]
    earlier = hour - dt.timedelta(hours=1)
    until_the_hour = {**today, "from": earlier.isoformat(), "to": hour.isoformat()}
    assert admin.delete("/api/gdpr/erase", params=until_the_hour).status_code == 200
    post_events(server.url, "a.example", 3)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert len(read_events(data_dir)) == 5  # none of this hour's events was dropped


async def test_retention_deletes_old_days_at_start(start_server: Any, tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "kept")
    layout.create()
    today = (TODAY - dt.date(1970, 1, 1)).days
    events = [make_event(site_id="a.example", timestamp=(today - age) * DAY_US) for age in range(5)]
    write_batch(events_to_table(events), layout, "history")
    await start_server(data_dir=layout.root, retention_days=2)
    deadline = time.monotonic() + 10
    while len(list(layout.events.glob("site_id=a.example/date=*"))) > 2:
        assert time.monotonic() < deadline, "retention did not run"
        await trio.sleep(0.05)
    kept = sorted(p.name for p in layout.events.glob("site_id=a.example/date=*"))
    assert kept == [f"date={TODAY - dt.timedelta(days=1)}", f"date={TODAY}"]
