"""The write-ahead log: framing, torn tails, crash points, kill -9, a full disk."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mallard.storage.layout import DataLayout
from mallard.storage.parquet import write_batch
from mallard.storage.schema import Event, events_to_table
from mallard.storage.wal import HEADER, WriteAheadLog, read_segment, recover
from mallard.storage.writer import EventWriter
from tests.conftest import BROWSER_UA, SEED_EVENT, read_events, start_process
from tests.factories import make_events

REPO = Path(__file__).resolve().parent.parent


def write_segment(layout: DataLayout, groups: list[list[Event]]) -> Path:
    """A segment as a writer that then died would leave it (its lock released)."""
    wal = WriteAheadLog(layout, "20260101T000000-1-deadbeef")
    for group in groups:
        wal.append(0, group)
    path = wal.segment_path(0)
    wal.close_segment()
    os.close(wal._lock)  # the process "dies": the kernel releases its lock
    return path


@pytest.fixture
def layout(tmp_path: Path) -> DataLayout:
    layout = DataLayout(tmp_path / "data")
    layout.create()
    return layout


def stored_paths(layout: DataLayout) -> Counter[str]:
    return Counter(event["pathname"] for event in read_events(layout.root))


def test_segment_round_trip(layout: DataLayout) -> None:
    events = make_events(10)
    path = write_segment(layout, [events[:4], events[4:]])
    contents = read_segment(path)
    assert contents.events == events
    assert (contents.records, contents.bad_tail) == (2, None)


@pytest.mark.parametrize("damage", ["cut in half", "flipped byte", "torn header"])
def test_a_damaged_last_record_loses_only_itself(layout: DataLayout, damage: str) -> None:
    events = make_events(9)
    path = write_segment(layout, [events[:3], events[3:6], events[6:]])
    data = bytearray(path.read_bytes())
    last_start = len(data) - (HEADER.size + HEADER.unpack_from(
        data, _record_offsets(bytes(data))[-1])[0])  # fmt: skip
    if damage == "cut in half":
        data = data[: last_start + (len(data) - last_start) // 2]
    elif damage == "flipped byte":
        data[-5] ^= 0xFF
    else:
        data = data[: last_start + 3]
    path.write_bytes(bytes(data))
    contents = read_segment(path)
    assert contents.events == events[:6]
    assert contents.bad_tail

    report = recover(layout)
    assert report.events == 6
    assert sorted(stored_paths(layout)) == sorted(e.pathname for e in events[:6])


def _record_offsets(data: bytes) -> list[int]:
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += HEADER.size + HEADER.unpack_from(data, offset)[0]
    return offsets


def test_recovery_removes_the_folder_of_a_writer_that_died_while_starting(
    layout: DataLayout,
) -> None:
    """Made as ``.<id>``, locked, renamed: killed before the rename, it held nothing
    (killed between making the folder and its lock file, neither)."""
    dead, unlocked, starting = (
        layout.wal / name
        for name in (".20260101T000000-1-deaddead", ".1-3-nolock", ".now-2-starting")
    )
    for folder in (dead, unlocked, starting):
        folder.mkdir(parents=True)
    for folder in (dead, starting):
        (folder / "lock").touch()
    for folder in (dead, unlocked):
        os.utime(folder, (time.time() - 3600, time.time() - 3600))
    recover(layout)
    assert not dead.exists() and not unlocked.exists()
    assert starting.exists()  # its writer may be about to lock it


def test_recovery_is_idempotent_and_skips_live_writers(layout: DataLayout) -> None:
    events = make_events(30)
    write_segment(layout, [events])
    live = WriteAheadLog(layout, "20260101T000001-2-livelive")
    live.append(0, make_events(5, sites=("live.io",)))

    report = recover(layout)
    assert (report.writers, report.segments, report.events, report.files) == (1, 1, 30, 3)
    assert recover(layout).events == 0
    assert stored_paths(layout) == Counter(e.pathname for e in events)
    assert live.segment_path(0).exists()  # a running writer's log is left alone
    live.close()


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from tests.factories import make_events
    from tests.test_wal import write_segment
    from mallard.storage import parquet, wal
    from mallard.storage.layout import DataLayout, batch_name

    layout = DataLayout(Path({data!r}))
    point, count = {point!r}, {count!r}
    if point == "replay":
        pass  # the segment exists already; crash while recovering it
    else:
        write_segment(layout, [make_events(30)])
    calls = 0
    real_replace = os.replace
    def crashing_replace(src, dst):
        global calls
        if point in ("rename", "replay") and calls == count:
            os._exit(9)  # as sudden as kill -9: no cleanup, no flush
        calls += 1
        real_replace(src, dst)
    parquet.os.replace = crashing_replace
    real_unlink = Path.unlink
    def crashing_unlink(self, missing_ok=False):
        if point == "retire" and self.suffix == ".wal":
            os._exit(9)
        real_unlink(self, missing_ok=missing_ok)
    Path.unlink = crashing_unlink
    wal.recover(layout)
    sys.exit(0)
    """
)


def crash_at(layout: DataLayout, point: str, count: int = 0) -> int:
    script = CRASH_SCRIPT.format(repo=str(REPO), data=str(layout.root), point=point, count=count)
    return subprocess.run([sys.executable, "-c", script], timeout=120).returncode


@pytest.mark.parametrize(
    ("point", "count"),
    [("rename", 0), ("rename", 1), ("rename", 2), ("retire", 0)],
    ids=["before-first-rename", "after-one-rename", "after-two-renames", "before-retiring"],
)
def test_exactly_once_whatever_step_a_crash_interrupts(
    layout: DataLayout, point: str, count: int
) -> None:
    assert crash_at(layout, point, count) == 9
    recover(layout)  # the restart
    assert stored_paths(layout) == Counter(e.pathname for e in make_events(30))
    assert not any(layout.wal.rglob("*.wal"))
    assert not any(layout.tmp.iterdir())


def test_exactly_once_when_replay_itself_crashes(layout: DataLayout) -> None:
    write_segment(layout, [make_events(30)])
    assert crash_at(layout, "replay", 1) == 9  # dies during recovery, after one file
    assert len(list(layout.events.rglob("*.parquet"))) == 1
    recover(layout)
    assert stored_paths(layout) == Counter(e.pathname for e in make_events(30))


def test_kill_9_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """Concurrent clients, kill -9 mid-stream, restart: every 202 is in Parquet once."""
    data_dir = tmp_path / "data"
    env = {"MALLARD_FLUSH_COUNT": "200", "MALLARD_FLUSH_INTERVAL": "3600"}
    server = start_process(data_dir, env=env)
    acknowledged: set[str] = set()
    refused: set[str] = set()
    unanswered: set[str] = set()

    async def clients() -> None:
        async with httpx.AsyncClient(headers={"User-Agent": BROWSER_UA}, timeout=10) as client:

            async def send(worker: int) -> None:
                for index in range(125):
                    path = f"/w{worker}/{index}"
                    body = {**SEED_EVENT, "u": f"https://example.com{path}"}
                    try:
                        response = await client.post(f"{server.url}/api/event", json=body)
                    except httpx.HTTPError:
                        unanswered.add(path)
                        continue
                    (acknowledged if response.status_code == 202 else refused).add(path)
                    if len(acknowledged) == 1000:
                        server.process.kill()  # SIGKILL mid-stream

            async with trio.open_nursery() as nursery:
                for worker in range(16):
                    nursery.start_soon(send, worker)

    trio.run(clients)
    assert server.wait() == -signal.SIGKILL
    assert 1000 <= len(acknowledged) < 2000

    restarted = start_process(data_dir, env=env)
    assert "replayed" in restarted.log
    restarted.signal(signal.SIGTERM)
    assert restarted.wait() == 0

    stored = Counter(event["pathname"] for event in read_events(data_dir))
    assert max(stored.values()) == 1  # no duplicates
    assert acknowledged <= set(stored)  # nothing acknowledged is lost
    # An event can be durable yet unanswered (killed between fsync and reply),
    # but never one that was answered with an error.
    assert set(stored) <= acknowledged | unanswered
    assert not refused & set(stored)


async def test_full_disk_gets_503_and_recovers_by_itself(start_server: Any) -> None:
    server = await start_server(flush_count=5, shutdown_timeout=10.0)
    assert (await server.post_event(SEED_EVENT)).status_code == 202
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))  # every file is "full" past 64 bytes
    try:
        statuses = [(await server.post_event(SEED_EVENT)).status_code for _ in range(5)]
        ready = await server.client.get(f"{server.url}/health/ready")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert statuses == [503] * 5
    assert ready.status_code == 503
    ready = await server.client.get(f"{server.url}/health/ready")
    assert ready.status_code == 200, ready.text  # space is back: ready before any event
    after = [(await server.post_event(SEED_EVENT)).status_code for _ in range(5)]
    assert after == [202] * 5  # space is back: no restart needed
    await server.stop()
    assert len(server.events()) == 6


async def test_memory_durability_answers_before_disk(start_server: Any) -> None:
    server = await start_server(durability="memory")
    assert not any((server.data_dir / "wal").iterdir())
    for _ in range(3):
        assert (await server.post_event(SEED_EVENT)).status_code == 202
    assert not any((server.data_dir / "wal").iterdir())
    await server.stop()
    assert len(server.events()) == 3


def test_append_and_retire_from_two_threads(layout: DataLayout) -> None:
    """The collector appends to segment N+1 while the flusher retires segment N.

    (A load test once caught the two threads tearing the segment state apart; the
    race window is too narrow to hit reliably here, so this checks the outcome.)
    """
    wal = WriteAheadLog(layout, "20260101T000002-3-racerace")
    events = make_events(3)
    errors: list[BaseException] = []
    retire_up_to = [-1]

    def retirer() -> None:
        try:
            for number in range(300):
                while retire_up_to[0] < number:
                    time.sleep(0)
                wal.retire(number)
        except BaseException as error:  # reported below
            errors.append(error)

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: provoke the race
    try:
        thread = threading.Thread(target=retirer)
        thread.start()
        for number in range(301):
            for _ in range(3):
                wal.append(number, events)
            retire_up_to[0] = number  # the batch is "flushed" as the next one starts
        thread.join()
    finally:
        sys.setswitchinterval(switch_interval)
    assert errors == []
    assert [p.name for p in wal.folder.glob("*.wal")] == ["00000300.wal"]
    assert read_segment(wal.segment_path(300)).events == events * 3
    wal.close()


def test_a_retried_batch_never_writes_a_partition_twice(layout: DataLayout) -> None:
    """An attempt writes a.com's file, then fails on b.org's; before the retry,
    compaction merges a.com's file away (its events are still stored, under
    another name): the retry writes b.org's file only."""
    events = make_events(4, sites=("a.com", "b.org"))
    table = events_to_table(events)
    name = "20260101T000000-1-aaaaaaaa-00000000"
    blocked = layout.partition("b.org", 20_000)
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder: b.org's write fails")
    done: set[Path] = set()
    with pytest.raises(OSError):
        write_batch(table, layout, name, done)
    [written] = done
    assert written.parent == layout.partition("a.com", 20_000)
    written.unlink()  # merged into a compacted file
    blocked.unlink()
    [retried] = write_batch(table, layout, name, done)
    assert retried.parent == blocked
    assert not written.exists()


async def test_appends_stay_on_the_event_loop_while_the_disk_is_fast(layout: DataLayout) -> None:
    """No thread round trip while fsyncs are fast; after a slow one the next append
    is in a thread, so a slow disk never holds up the event loop twice in a row."""
    writer = EventWriter(layout, flush_count=1000, flush_interval=3600.0)
    loop_thread = threading.get_ident()
    wal, real_append = writer._wal, writer._wal.append  # type: ignore[union-attr]
    on_loop: list[bool] = []
    fsync_seconds = [0.0]  # what the disk is said to take, whatever this one's takes

    def append(number: int, events: list[Event]) -> float:  # the real append, watched
        on_loop.append(threading.get_ident() == loop_thread)
        real_append(number, events)
        return fsync_seconds[0]

    wal.append = append  # type: ignore[method-assign, union-attr]
    send, receive = trio.open_memory_channel[Event](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run, receive)
        for sequence, seconds in enumerate([0, 0, 0, 0.01, 0.01, 0, 0], start=1):
            fsync_seconds[0] = seconds  # a disk that gets slow, then fast again
            await send.send(make_events(1)[0])
            assert await writer.wait_durable(sequence)
        await send.aclose()
    assert on_loop == [False, True, True, True, False, False, True]
    assert len(read_events(layout.root)) == 7
