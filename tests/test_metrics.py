"""``GET /metrics``: parsed with the Prometheus text parser after known traffic."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from mallard.metrics import MAX_SITE_LABELS, OTHER_SITES, Metrics, bearer_token_matches
from tests.conftest import BROWSER_UA, SEED_EVENT, start_process
from tests.test_workers import children, wait_for

BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
CLIENT_IP = "203.0.113.77"  # sent as X-Forwarded-For from loopback, a trusted proxy
FLUSHED = "mallard_flushed_events_total"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def scrape(client: httpx.AsyncClient, url: str, **headers: str) -> Samples:
    response = await client.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def test_metrics_after_known_traffic(start_server: Any) -> None:
    server = await start_server(
        flush_count=3, rate_limit=0.001, rate_burst=3, site_ids=("example.com",)
    )
    post = server.post_event
    browser = {"User-Agent": BROWSER_UA, "X-Forwarded-For": CLIENT_IP}
    for index in range(5):  # 3 within the burst, then 2 rate-limited
        body = {**SEED_EVENT, "u": f"https://example.com/{index}"}
        expected = 202 if index < 3 else 429
        assert (await post(body, headers=browser)).status_code == expected
    bot = await post({**SEED_EVENT, "d": "shop.example"}, headers={"User-Agent": BOT_UA})
    assert bot.status_code == 202
    foreign = {**browser, "Origin": "https://evil.example"}
    assert (await post(SEED_EVENT, headers=foreign)).status_code == 403
    assert (await post({"d": "example.com", "n": "pageview"}, headers=browser)).status_code == 422
    assert (await post(content=b"{not json", headers=browser)).status_code == 400
    batch = b'{"d": "example.com", "n": "x"}\n{"d": "??", "n": "x", "u": "https://a.b/"}'
    response = await server.client.post(f"{server.url}/api/events", content=batch, headers=browser)
    assert response.status_code == 400  # both events invalid: the first names its site
    assert (await server.client.get(f"{server.url}/api/stats/main?site_id=example.com")).is_success

    with trio.fail_after(10):  # the batch of 3 is flushed in the background
        while value(samples := await scrape(server.client, server.url), FLUSHED) < 3:
            await trio.sleep(0.05)
    assert value(samples, "mallard_events_accepted_total") == 3
    dropped = {
        (dict(labels)["reason"], dict(labels)["site"]): count
        for (name, labels), count in samples.items()
        if name == "mallard_events_dropped_total" and count
    }
    assert dropped == {
        ("rate_limited", "example.com"): 2,
        ("bot", "shop.example"): 1,
        ("origin", "example.com"): 1,
        ("invalid", "example.com"): 2,  # the 422 and the batch's first event
        ("invalid", ""): 2,  # the unparseable body and the batch's bad site id
    }
    assert value(samples, "mallard_events_dropped_total", reason="back_pressure", site="") == 0
    assert value(samples, "mallard_buffered_events") == 0
    assert value(samples, "mallard_parquet_files_written_total") == 1
    assert value(samples, "mallard_parquet_bytes_written_total") == sum(
        path.stat().st_size for path in (server.data_dir / "events").rglob("*.parquet")
    )
    assert value(samples, "mallard_flush_duration_seconds_count") == 1
    assert value(samples, "mallard_wal_fsync_duration_seconds_count") >= 1
    assert value(samples, "mallard_query_duration_seconds_count", endpoint="/api/stats/main") == 1
    assert value(samples, "mallard_compaction_runs_total", outcome="ok") == 1  # at start

    text = (await server.client.get(f"{server.url}/metrics")).text
    assert CLIENT_IP not in text
    labels = {name for (_, pairs) in samples for name, _ in pairs}
    assert labels <= {"reason", "site", "endpoint", "outcome", "le"}


async def test_buffered_events_gauge_follows_the_writer(start_server: Any) -> None:
    server = await start_server()  # flushes only at the end
    for _ in range(4):
        assert (await server.post_event(SEED_EVENT)).status_code == 202
    samples = await scrape(server.client, server.url)
    assert value(samples, "mallard_buffered_events") == 4
    assert value(samples, FLUSHED) == 0


async def test_metrics_token(start_server: Any) -> None:
    server = await start_server(metrics_token="s3cret-token")
    url = f"{server.url}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
        response = await server.client.get(url, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"error": "/metrics needs Authorization: Bearer <metrics_token>"}
        assert response.headers["www-authenticate"] == "Bearer"
    samples = await scrape(server.client, server.url, Authorization="Bearer s3cret-token")
    assert value(samples, "mallard_events_accepted_total") == 0


async def test_openmetrics_when_asked(server: Any) -> None:
    accept = "application/openmetrics-text; version=1.0.0"
    response = await server.client.get(f"{server.url}/metrics", headers={"Accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ("Bearer abc", True),
        ("bearer abc", True),
        ("Bearer  abc ", True),
        ("Bearer abd", False),
        ("Bearer ab", False),
        ("Basic abc", False),
        ("abc", False),
        ("", False),
        (None, False),
    ],
)
def test_bearer_token_matches(header: str | None, matches: bool) -> None:
    assert bearer_token_matches(header, "abc") is matches


def test_site_labels_are_bounded() -> None:
    metrics = Metrics()
    for index in range(MAX_SITE_LABELS + 5):
        metrics.dropped("bot", f"site{index}.example")
    samples = parse(metrics.exposition(None)[0].decode())
    sites = {
        dict(labels)["site"]
        for (name, labels), count in samples.items()
        if name == "mallard_events_dropped_total" and count
    }
    assert len(sites) == MAX_SITE_LABELS
    assert value(samples, "mallard_events_dropped_total", reason="bot", site=OTHER_SITES) == 6


# --- several workers: a scrape lands on one, the figures cover all ---


def sync_scrape(url: str) -> Samples:
    with httpx.Client() as client:  # a new connection each time: any worker may answer
        response = client.get(f"{url}/metrics")
    assert response.status_code == 200
    return parse(response.text)


def test_metrics_cover_every_worker(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_process(data_dir, "--workers", "2", env={"MALLARD_FLUSH_INTERVAL": "3600"})
    wait_for(lambda: server.log.count("serving") == 2)
    for index in range(40):
        with httpx.Client(headers={"User-Agent": BROWSER_UA}) as client:
            body = {**SEED_EVENT, "u": f"https://example.com/{index}"}
            assert client.post(f"{server.url}/api/event", json=body).status_code == 202
    run_folders = list((data_dir / "tmp" / "metrics").iterdir())
    assert [folder.name for folder in run_folders] == [str(server.process.pid)]
    assert len(list(run_folders[0].glob("counter_*.db"))) == 2  # one per worker
    for _ in range(8):
        samples = sync_scrape(server.url)
        assert value(samples, "mallard_events_accepted_total") == 40
        assert value(samples, "mallard_buffered_events") == 40

    os.kill(children(server.process.pid)[0], signal.SIGKILL)
    wait_for(lambda: "starting it again" in server.log and server.log.count("serving") == 3)
    replay = re.search(r"replayed (\d+) events", server.log)
    replayed = int(replay.group(1)) if replay else 0  # the dead worker may have had none
    samples = sync_scrape(server.url)  # the dead worker's gauge went when its successor started
    assert value(samples, "mallard_buffered_events") == 40 - replayed
    assert value(samples, "mallard_events_accepted_total") == 40  # counters never go back
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
