"""``log_format = json``: one JSON object per line, with counts and durations as keys."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import httpx

from mallard.logs import JsonFormatter
from tests.conftest import BROWSER_UA, SEED_EVENT, ServerProcess, start_process
from tests.test_workers import wait_for

JSON_LOGS = {"MALLARD_LOG_FORMAT": "json", "MALLARD_FLUSH_INTERVAL": "3600"}


def start_json_process(data_dir: Path, **env: str) -> ServerProcess:
    """``start_process``, with the URL from the "listening on" entry's ``url`` key.

    (``start_process`` reads it from the raw line, where JSON puts a quote after it.)
    """
    server = start_process(data_dir, env={**JSON_LOGS, **env})
    listening = find(server, "listening on")
    assert listening is not None
    return dataclasses.replace(server, url=listening["url"])


def entries(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line the server logged, each parsed as JSON (a line that is not fails)."""
    return [json.loads(line) for line in server.log.splitlines()]


def find(server: ServerProcess, message_start: str) -> dict[str, Any] | None:
    return next((e for e in entries(server) if e["message"].startswith(message_start)), None)


def send(server: ServerProcess, count: int) -> None:
    with httpx.Client(headers={"User-Agent": BROWSER_UA}) as client:
        for _ in range(count):
            assert client.post(f"{server.url}/api/event", json=SEED_EVENT).status_code == 202


def test_flush_and_its_failure_log_one_json_line_each(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_json_process(data_dir, MALLARD_FLUSH_COUNT="2")
    blocker = data_dir / "events" / "site_id=example.com"
    blocker.write_text("a file where the site's folder should be")  # the flush fails
    send(server, 2)
    wait_for(lambda: find(server, "flush of 2 events failed") is not None)
    blocker.unlink()  # the retry succeeds
    wait_for(lambda: find(server, "flushed 2 events") is not None)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0

    failure = find(server, "flush of 2 events failed")
    assert failure is not None
    assert (failure["level"], failure["logger"], failure["events"]) == (
        "error",
        "mallard.writer",
        2,
    )
    assert "site_id=example.com" in failure["error"]
    flush = find(server, "flushed 2 events")
    assert flush is not None
    assert (flush["level"], flush["events"], flush["files"]) == ("info", 2, 1)
    [written] = (data_dir / "events").rglob("*.parquet")
    assert flush["bytes"] == written.stat().st_size
    assert flush["duration_ms"] > 0
    assert find(server, "flushing works again") is not None
    for entry in entries(server):
        assert entry["time"].endswith("Z") and {"level", "logger", "message"} <= set(entry)


def test_replay_logs_one_json_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    crashed = start_json_process(data_dir)
    send(crashed, 3)
    crashed.signal(signal.SIGKILL)  # the events are only in the write-ahead log
    crashed.wait()
    restarted = start_json_process(data_dir)
    restarted.signal(signal.SIGTERM)
    assert restarted.wait() == 0
    replay = find(restarted, "replayed 3 events")
    assert replay is not None
    assert (replay["logger"], replay["events"], replay["segments"]) == ("mallard.server", 3, 1)
    assert (replay["writers"], replay["files"]) == (1, 1)
    assert replay["duration_ms"] > 0


def test_json_formatter_keeps_an_exception_on_its_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord(
            "mallard.x", logging.ERROR, __file__, 1, "failed: %d", (3,), None
        )
        record.exc_info = sys.exc_info()
    record.events = 3
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["message"], entry["events"], entry["level"]) == ("failed: 3", 3, "error")
    assert "ValueError: boom" in entry["exception"]
