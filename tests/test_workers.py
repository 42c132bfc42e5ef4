"""``mallard serve --workers N``: processes sharing one port, restarted when they die."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import BROWSER_UA, SEED_EVENT, read_events, start_process


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


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_workers_share_the_port_and_survive_a_kill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_process(data_dir, "--workers", "2", env={"MALLARD_FLUSH_INTERVAL": "3600"})
    wait_for(lambda: server.log.count("serving") == 2)
    accepted: list[str] = []

    def send(count: int, prefix: str) -> None:
        for index in range(count):  # a new connection each time: the kernel spreads them
            with httpx.Client(headers={"User-Agent": BROWSER_UA}) as client:
                body = {**SEED_EVENT, "u": f"https://example.com/{prefix}/{index}"}
                response = client.post(f"{server.url}/api/event", json=body)
                assert response.status_code == 202
                accepted.append(f"/{prefix}/{index}")

    send(60, "before")
    workers = children(server.process.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)  # its unflushed events are only in its WAL now
    wait_for(lambda: "starting it again" in server.log and server.log.count("serving") == 3)
    assert "replayed" in server.log
    send(60, "after")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    stored = sorted(event["pathname"] for event in read_events(data_dir))
    assert stored == sorted(accepted)


def test_workers_setting_is_validated(tmp_path: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "mallard", "serve", "--workers", "many"]
    result = subprocess.run(
        [*command, "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--workers" in result.stderr
