"""``mallard serve --workers N``: processes sharing one port, restarted when they die."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import BROWSER_UA, SEED_EVENT, ServerProcess, read_events, start_process


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def running(pid: int) -> bool:
    """True while ``pid`` runs (not a zombie: an orphan's exit may never be reaped here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def send(url: str, count: int, prefix: str) -> list[str]:
    """``count`` pageviews, each on a new connection (the kernel spreads them); their pages."""
    pages = []
    for index in range(count):
        with httpx.Client(headers={"User-Agent": BROWSER_UA}) as client:
            body = {**SEED_EVENT, "u": f"https://example.com/{prefix}/{index}"}
            assert client.post(f"{url}/api/event", json=body).status_code == 202
            pages.append(f"/{prefix}/{index}")
    return pages


def start_workers(data_dir: Path) -> tuple[ServerProcess, list[int]]:
    """``--workers 2`` (nothing flushed before they stop), once both serve; and their pids."""
    server = start_process(data_dir, "--workers", "2", env={"MALLARD_FLUSH_INTERVAL": "3600"})
    wait_for(lambda: server.log.count("serving") == 2)
    workers = children(server.process.pid)
    assert len(workers) == 2
    return server, workers


def test_workers_share_the_port_and_survive_a_kill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server, workers = start_workers(data_dir)
    accepted = send(server.url, 60, "before")
    os.kill(workers[0], signal.SIGKILL)  # its unflushed events are only in its WAL now
    wait_for(lambda: "starting it again" in server.log and server.log.count("serving") == 3)
    assert "replayed" in server.log
    accepted += send(server.url, 60, "after")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    stored = sorted(event["pathname"] for event in read_events(data_dir))
    assert stored == sorted(accepted)


def test_workers_stop_and_flush_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server, workers = start_workers(data_dir)
    accepted = send(server.url, 40, "page")
    server.signal(signal.SIGKILL)  # no signal reaches the workers
    server.wait()
    wait_for(lambda: not any(running(pid) for pid in workers))
    assert server.log.count("the supervisor is gone: stopping") == 2
    assert server.log.count("all accepted events are flushed") == 2
    assert sorted(event["pathname"] for event in read_events(data_dir)) == sorted(accepted)


def test_workers_setting_is_validated(tmp_path: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "mallard", "serve", "--workers", "many"]
    result = subprocess.run(
        [*command, "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--workers" in result.stderr


def test_workers_that_cannot_start_stop_the_start(tmp_path: Path) -> None:
    """A data dir the workers cannot use fails each the same way every time: no restarts
    forever, but the workers' one line and their exit code."""
    import subprocess
    import sys

    (tmp_path / "keys" / "secret").mkdir(parents=True)  # the secret's file is a folder
    command = [sys.executable, "-m", "mallard", "serve", "--workers", "2", "--port", "0"]
    result = subprocess.run(
        [*command, "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "invalid setting data_dir: " in result.stderr
    assert "starting it again" not in result.stderr


def test_every_process_answers_with_the_events_the_others_accepted(tmp_path: Path) -> None:
    """Read-your-writes across processes (workers, or servers sharing a data dir): each
    reads the others' write-ahead logs. Two servers on their own ports tell which is which."""
    data_dir = tmp_path / "data"
    env = {"MALLARD_FLUSH_INTERVAL": "3600", "MALLARD_COMPACTION_INTERVAL": "0"}
    taker, asked = start_process(data_dir, env=env), start_process(data_dir, env=env)
    params = {"site_id": "example.com", "period": "day", "format": "json"}
    try:
        pages = send(taker.url, 3, "page")
        with httpx.Client() as client:
            exported = client.get(f"{asked.url}/api/stats/export", params=params).text
            assert sorted(json.loads(line)["pathname"] for line in exported.splitlines()) == pages
            sites = client.get(f"{asked.url}/api/sites").json()["sites"]
            assert [(s["site_id"], s["has_data"]) for s in sites] == [("example.com", True)]
            taker.signal(signal.SIGTERM)  # flushed: now in Parquet, and in no log
            assert taker.wait() == 0
            exported = client.get(f"{asked.url}/api/stats/export", params=params).text
            assert len(exported.splitlines()) == 3  # not counted twice
    finally:
        asked.signal(signal.SIGTERM)
    assert asked.wait() == 0
