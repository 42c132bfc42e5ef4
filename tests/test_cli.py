"""``mallard serve`` as a real process: start-up validation, signals, exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from mallard.config import SETTINGS, load_settings
from mallard.server import shut_down_client_connections
from mallard.storage.layout import DataLayout
from mallard.synthetic import generate
from tests.conftest import BROWSER_UA, SEED_EVENT, read_events, start_process
from tests.factories import make_events
from tests.test_wal import write_segment

REPO = Path(__file__).resolve().parent.parent
SETTING_LINE = re.compile(r"^(# )?[a-z_]+ = ")


def run_mallard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLARD_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mallard", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--port", "abc"], {}, "--port"),
        (["--port", "70000"], {}, "--port"),
        ([], {"MALLARD_PORT": "abc"}, "MALLARD_PORT"),
        ([], {"MALLARD_FLUSH_COUNT": "-5"}, "MALLARD_FLUSH_COUNT"),
        ([], {"MALLARD_LOG_FORMAT": "xml"}, "MALLARD_LOG_FORMAT"),
        ([], {"MALLARD_FILTER_BOTS": "perhaps"}, "MALLARD_FILTER_BOTS"),
        ([], {"MALLARD_FLUSH_INTERVAL": "soon"}, "MALLARD_FLUSH_INTERVAL"),
        ([], {"MALLARD_TRUSTED_PROXIES": "10.0.0.0/33"}, "MALLARD_TRUSTED_PROXIES"),
        ([], {"MALLARD_SITE_IDS": "ok.com,bad/site"}, "MALLARD_SITE_IDS"),
        ([], {"MALLARD_GEOIP_DB": "/no/such/file.mmdb"}, "MALLARD_GEOIP_DB"),
        (["--config", "/no/such/mallard.toml"], {}, "config"),
        # only binding finds these out
        (["--host", "no-such-host.invalid"], {}, "setting host: cannot resolve"),
        (["--host", "192.0.2.1"], {}, "setting host: 192.0.2.1 is not an address"),
    ],
)
def test_bad_setting_stops_startup_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    result = run_mallard("serve", "--data-dir", str(tmp_path), *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "content", ['port = "abc"\n', "port = \n", "flush_count = -1\n", 'colour = "blue"\n']
)
def test_bad_toml_stops_startup(tmp_path: Path, content: str) -> None:
    config = tmp_path / "mallard.toml"
    config.write_text(content)
    result = run_mallard("serve", "--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_example_config_documents_every_setting() -> None:
    example = REPO / "config" / "mallard.toml"
    text = example.read_text()
    for key in SETTINGS:
        assert f"# {key} =" in text or f"\n{key} =" in text, f"{key} is not in {example}"
    uncommented = "\n".join(
        line.removeprefix("# ") for line in text.splitlines() if SETTING_LINE.match(line)
    )
    documented = tomllib.loads(uncommented)
    assert set(documented) == set(SETTINGS)
    load_settings(config_file=example, environ={})  # the file as shipped is valid


def test_flags_beat_env_beat_toml(tmp_path: Path) -> None:
    config = tmp_path / "mallard.toml"
    config.write_text('host = "127.0.0.2"\nport = 1\nlog_format = "json"\n')
    server = start_process(
        tmp_path / "data",
        "--config", str(config), "--host", "127.0.0.1",
        env={"MALLARD_PORT": "2", "MALLARD_LOG_FORMAT": "text"},
    )  # fmt: skip
    try:
        assert server.url.startswith("http://127.0.0.1:")  # --host beat the file
        assert not server.url.endswith((":1", ":2"))  # --port 0 beat env and file
        assert not server.log.lstrip().startswith("{")  # env's text beat the file's json
    finally:
        server.signal(signal.SIGTERM)
        assert server.wait() == 0


def test_json_logs(tmp_path: Path) -> None:
    server = start_process(tmp_path / "data", env={"MALLARD_LOG_FORMAT": "json"})
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    records = [json.loads(line) for line in server.log.splitlines() if line.strip()]
    assert any("listening on http://" in record["message"] for record in records)
    assert all({"time", "level", "message"} <= set(record) for record in records)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_flushes_everything_and_exits_0(tmp_path: Path, signum: int) -> None:
    data_dir = tmp_path / "data"
    server = start_process(data_dir, env={"MALLARD_FLUSH_INTERVAL": "3600"})
    with httpx.Client(headers={"User-Agent": BROWSER_UA}) as client:
        for index in range(50):
            body = {**SEED_EVENT, "u": f"https://example.com/page/{index}"}
            assert client.post(f"{server.url}/api/event", json=body).status_code == 202
    assert read_events(data_dir) == []  # still buffered
    server.signal(signum)
    assert server.wait(timeout=30) == 0
    stored = sorted(event["pathname"] for event in read_events(data_dir))
    assert stored == sorted(f"/page/{index}" for index in range(50))
    assert "stopped; all accepted events are flushed" in server.log


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    first = start_process(tmp_path / "one")
    try:
        port = first.url.rsplit(":", 1)[1]
        result = run_mallard("serve", "--port", port, "--data-dir", str(tmp_path / "two"))
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            f"mallard: invalid setting port: 127.0.0.1:{port} is already in use"
        ]
    finally:
        first.signal(signal.SIGTERM)
        first.wait()


@pytest.mark.parametrize("kind", ["a file", "a symlink loop", "under /proc"])
def test_a_data_dir_that_cannot_be_one_is_one_line(tmp_path: Path, kind: str) -> None:
    if kind == "a file":
        data_dir = tmp_path / "file"
        data_dir.write_text("")
    elif kind == "a symlink loop":
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        data_dir = tmp_path / "loop" / "data"
    else:  # its parent cannot be made either
        data_dir = Path("/proc/no-such-mallard/data")
    result = run_mallard("serve", "--data-dir", str(data_dir))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("mallard: invalid setting data_dir: ")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["serve", "--data-dir", "~no-such-mallard-user/d"], "invalid setting --data-dir: "),
        (["demo", "--port", "0", "--data-dir", "/dev/null"], "invalid setting data_dir: "),
        (["demo", "--days", "1000000"], "--days: '1000000' must be at most"),
        (["compact", "--before", "0001-01-01"], "--before: 0001-01-01 is not between"),
    ],
)
def test_bad_arguments_of_every_command_are_one_line(
    tmp_path: Path, args: list[str], named: str
) -> None:
    (tmp_path / "events").mkdir()  # for compact, which needs some
    if "--data-dir" not in args:
        args = [*args, "--data-dir", str(tmp_path)]
    result = run_mallard(*args)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        # every flush would fail on it: no event is accepted while it cannot be read
        ("erasures.json", "is not a list of erasures"),
        ("auth/mallard.sqlite3", "is not a usable SQLite database"),
        ("auth/mallard.sqlite3/", "is not a usable SQLite database"),  # a folder: a traceback
    ],
)
def test_a_state_file_that_cannot_be_read_stops_startup_in_one_line(
    tmp_path: Path, name: str, problem: str
) -> None:
    if name.endswith("/"):
        (tmp_path / name).mkdir(parents=True)
    else:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("{bad")
    name = name.rstrip("/")
    result = run_mallard("serve", "--data-dir", str(tmp_path), "--port", "0")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"mallard: cannot start: {tmp_path / name} {problem}")


def test_a_log_that_cannot_be_replayed_stops_startup_without_blaming_a_setting(
    tmp_path: Path,
) -> None:
    layout = DataLayout(tmp_path)
    layout.create()
    write_segment(layout, [make_events(3)])  # a writer died with these in its log
    site = layout.events / f"site_id={make_events(1)[0].site_id}"
    site.write_text("not a folder")  # where replay must write them
    result = run_mallard("serve", "--data-dir", str(tmp_path), "--port", "0")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("mallard: cannot start: cannot replay the write-ahead log: ")
    site.unlink()
    server = start_process(tmp_path)  # replays, once it can: nothing was lost
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert len(read_events(tmp_path)) == 3


def test_a_client_that_stops_reading_does_not_hold_up_the_shutdown(tmp_path: Path) -> None:
    """hypercorn writes under a shield: a stalled export would wait for its reader."""
    data_dir = tmp_path / "data"
    generate(data_dir, events=60_000, days=2, sites=["example.com"], seed=3)  # ~15 MB of CSV
    env = {"MALLARD_SHUTDOWN_TIMEOUT": "6", "MALLARD_FLUSH_INTERVAL": "3600"}
    server = start_process(data_dir, env=env)
    assert httpx.post(f"{server.url}/api/event", json=SEED_EVENT).status_code == 202
    stalled = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(
        b"GET /api/stats/export?site_id=example.com&period=7d HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    with stalled:
        assert stalled.recv(100).startswith(b"HTTP/1.1 200")  # then it reads no more
        time.sleep(1)  # the server's buffers fill up
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert time.monotonic() - started < 6
    assert "cut 1 connections whose clients stopped reading" in server.log
    assert "stopped; all accepted events are flushed" in server.log
    assert len(read_events(data_dir)) == 60_001


def test_only_the_served_ports_connections_are_cut() -> None:
    """Connections accepted on the given ports are shut down; other sockets are left."""
    served, other = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(served.getsockname())
    bystander = socket.create_connection(other.getsockname())
    (accepted, _), (kept, _) = served.accept(), other.accept()
    pair = socket.socketpair()
    try:
        assert shut_down_client_connections({served.getsockname()[1]}) == 1
        assert client.recv(1) == b""  # the server's end was shut down
        bystander.sendall(b"x")
        assert kept.recv(1) == b"x"
        pair[0].sendall(b"y")
        assert pair[1].recv(1) == b"y"
    finally:
        for sock in (served, other, client, bystander, accepted, kept, *pair):
            sock.close()


def test_demo_fills_a_data_dir_and_serves_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    args = ("--events", "3000", "--days", "10")
    server = start_process(data_dir, *args, command="demo", timeout=120)
    assert "demo: generating [" in server.log and "demo: compacting [" in server.log
    params = {"site_id": "shop.example.org", "period": "30d", "metrics": "visitors,visits"}
    main = httpx.get(f"{server.url}/api/stats/main", params=params).json()
    visitors, visits = main["results"][0]["metrics"]
    assert 0 < visitors <= visits
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert any((data_dir / "visits").rglob("*.parquet"))  # compacted, with visit rollups
    again = start_process(data_dir, *args, command="demo")  # reuses what is there
    assert "reusing the traffic" in again.log
    again.signal(signal.SIGTERM)
    assert again.wait() == 0
