"""Shared fixtures: real Mallard servers on ephemeral ports, and readers for what they wrote."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
import trio

from mallard.config import Settings
from mallard.server import serve
from mallard.storage.layout import DataLayout

BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
SEED_EVENT = {"d": "example.com", "n": "pageview", "u": "https://example.com/pricing"}


def read_events(data_dir: Path) -> list[dict[str, Any]]:
    """Every stored event, read back the way the interface documents (DuckDB, Hive)."""
    layout = DataLayout(data_dir)
    if not any(layout.events.rglob("*.parquet")):
        return []
    relation = duckdb.sql(
        f"SELECT * FROM read_parquet('{layout.events_glob}', hive_partitioning = true) "
        "ORDER BY timestamp"
    )
    return [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]


def parquet_files(data_dir: Path) -> list[Path]:
    return sorted(DataLayout(data_dir).events.rglob("*.parquet"))


@dataclasses.dataclass
class RunningServer:
    url: str
    settings: Settings
    client: httpx.AsyncClient
    _stop: trio.Event
    _done: trio.Event

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    async def post_event(self, body: Any = None, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", {"User-Agent": BROWSER_UA})
        if body is not None and "content" not in kwargs:
            kwargs["json"] = body
        return await self.client.post(f"{self.url}/api/event", **kwargs)

    async def stop(self) -> None:
        """Graceful shutdown, as on SIGTERM: returns once everything is flushed."""
        self._stop.set()
        await self._done.wait()

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.data_dir)


@pytest.fixture
async def start_server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Any]:
    """``await start_server(**settings)`` runs a real server in this test's nursery."""
    started: list[RunningServer] = []

    async def start(**overrides: Any) -> RunningServer:
        overrides.setdefault("data_dir", tmp_path / f"data{len(started)}")
        overrides.setdefault("port", 0)
        overrides.setdefault("flush_interval", 3600.0)
        settings = Settings(**overrides)
        stop, done = trio.Event(), trio.Event()

        async def run(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await serve(settings, stop=stop, task_status=task_status)
            finally:
                done.set()

        url = await nursery.start(run)
        client = httpx.AsyncClient(timeout=10)
        server = RunningServer(url, settings, client, stop, done)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.client.aclose()
        await server.stop()


@pytest.fixture
async def server(start_server: Any) -> RunningServer:
    return await start_server()


# --- servers in their own process, for signals, exit codes and kill -9 ---


LISTENING = re.compile(r"listening on (http://[^\s\"]+)")  # also inside a JSON log line


@dataclasses.dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_process(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 30,
    command: str = "serve",
) -> ServerProcess:
    """``python -m mallard <command>`` on a free port; returns once it is listening."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLARD_")}
    environment.update(env or {})
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-{len(list(data_dir.parent.glob('*.log')))}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mallard",
                command,
                "--port",
                "0",
                "--data-dir",
                str(data_dir),
                *args,
            ],
            stderr=log_file,
            stdout=subprocess.DEVNULL,
            env=environment,
            start_new_session=True,  # a group of its own: its workers are killed with it
        )
    _STARTED.append(process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return ServerProcess(process, match.group(1), data_dir, log_path)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    kill_group(process)
    raise AssertionError("server did not start listening:\n" + log_path.read_text())


_STARTED: list[subprocess.Popen[bytes]] = []  # by start_process, in the current test


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process started by :func:`start_process` and whatever it started."""
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(autouse=True)
def _no_server_outlives_its_test() -> Iterator[None]:
    """Servers (and their workers) a test started are killed when it ends, even if it failed."""
    yield
    while _STARTED:
        kill_group(_STARTED.pop())
