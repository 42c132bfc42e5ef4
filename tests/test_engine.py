"""The query engine's resources: memory limit, spilling, its temporary folder, its threads,
its time limit."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import threading
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trio

from mallard.query import engine as engine_module
from mallard.query.engine import FileShapes, QueryEngine, QueryTimeout, QueryTooLarge
from mallard.query.model import parse_query
from mallard.query.stats import run_query
from mallard.query.threads import Handoff, MemoryGate, QueryThreads
from mallard.storage.compaction import compact
from mallard.storage.layout import DataLayout, day_number
from mallard.storage.locks import site_lock
from mallard.storage.schema import events_to_table
from tests.factories import make_event

DAY = dt.timedelta(days=1)


def test_a_query_bigger_than_its_memory_spills_to_the_data_dir(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    layout.create()
    dead = layout.spill_folder(999_999_999)  # left by a process that no longer runs
    dead.mkdir(parents=True)
    engine = QueryEngine(layout, memory_mb=64)
    try:
        _, settings = trio.run(
            engine.fetch,
            "SELECT current_setting('temp_directory'), current_setting('memory_limit')",
        )
        assert settings == [(str(layout.spill_folder(os.getpid())), "64.0 MiB")]
        assert not dead.exists()
        # about 300 MiB of hash table: far above the limit, so it spills instead of failing
        _, rows = trio.run(
            engine.fetch, "SELECT count(*) FROM (SELECT DISTINCT i FROM range(20000000) t(i))"
        )
        assert rows == [(20_000_000,)]
    finally:
        engine.close()


# One group's list cannot spill: about 1.5 million of them fit in 64 MiB once, not twice.
LISTS = "SELECT sum(len(l)) FROM (SELECT i % 2 AS g, list(i) AS l FROM range($n) t(i) GROUP BY g)"


async def test_queries_out_of_memory_together_run_again_alone(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    layout.create()
    engine = QueryEngine(layout, memory_mb=64, max_concurrent=2, cache_entries=0)
    answers: list[object] = []

    async def lists(n: int) -> None:
        answers.append((await engine.fetch(LISTS, {"n": n}))[1])

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(lists, 1_500_000)
    assert answers == [[(1_500_000,)]] * 4
    with pytest.raises(QueryTooLarge, match=r"more memory than query_memory_mb \(64 MiB\)"):
        await engine.fetch(LISTS, {"n": 3_000_000})  # too much even alone
    assert (await engine.fetch("SELECT 1"))[1] == [(1,)]


async def test_a_query_too_large_alone_is_refused_at_once_when_asked_again(
    tmp_path: Path,
) -> None:
    """Running it again would wait for every running query and hold back the next ones,
    only to run out of memory again: a reloaded dashboard would stall everyone's."""
    layout = DataLayout(tmp_path)
    layout.create()
    engine = QueryEngine(layout, memory_mb=64, max_concurrent=2)
    held, release = threading.Event(), threading.Event()

    def another_query() -> None:
        with engine._memory.together():
            held.set()
            release.wait(10)

    try:
        with pytest.raises(QueryTooLarge):
            await engine.fetch(LISTS, {"n": 3_000_000})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.to_thread.run_sync, another_query))
            await trio.to_thread.run_sync(held.wait)
            with trio.fail_after(2), pytest.raises(QueryTooLarge, match="query_memory_mb"):
                await engine.fetch(LISTS, {"n": 3_000_000})
            assert (await engine.fetch(LISTS, {"n": 1_000_000}))[1] == [(1_000_000,)]
            release.set()
    finally:
        release.set()
        engine.close()


async def test_exports_and_queries_share_the_memory(tmp_path: Path) -> None:
    """An export sorts every row before its first batch: a query that runs out of memory
    beside that sort runs again once it is done, and so does the sort; then the export
    reads its rows from a file of its own, holding none of DuckDB's memory."""
    layout = DataLayout(tmp_path)
    layout.create()
    (layout.events / "site_id=example.com").mkdir()
    engine = QueryEngine(layout, memory_mb=64, max_concurrent=2, cache_entries=0)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    sort = "SELECT i, i::VARCHAR AS t FROM range($n) t(i) ORDER BY hash(i)"  # spills
    exported: list[int] = []
    answers: list[object] = []

    async def export() -> None:
        batches = engine.stream(
            sort, {"n": 10_000_000}, site_id="example.com", start=start, end=start + DAY
        )
        async with contextlib.aclosing(batches):
            async for batch in batches:
                exported.append(batch.num_rows)
                await trio.sleep(0)  # a client reading while the queries run

    async def query(delay: float) -> None:
        await trio.sleep(delay)
        answers.append((await engine.fetch(LISTS, {"n": 2_000_000}))[1])  # fits alone

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(export)
            for delay in (0.05, 0.3, 0.8, 1.5):  # while it sorts, and while it is read
                nursery.start_soon(query, delay)
        assert sum(exported) == 10_000_000
        assert answers == [[(2_000_000,)]] * 4
        assert not any(layout.export_folder(os.getpid()).iterdir())
        assert _site_lock_is_free(layout, "example.com")
    finally:
        engine.close()


async def test_a_query_given_up_while_it_waits_for_memory_never_runs(tmp_path: Path) -> None:
    """DuckDB forgets an interrupt sent before its query starts: a query whose caller timed
    out while it waited would run on after, with nobody to stop it."""
    layout = DataLayout(tmp_path)
    layout.create()
    (layout.events / "site_id=example.com").mkdir()
    engine = QueryEngine(layout, timeout=0.3, max_concurrent=1, cache_entries=0)
    endless = "SELECT count(*) FROM range(1000000000000)"
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    held, release = threading.Event(), threading.Event()

    def hold_the_memory() -> None:
        with engine._memory.alone():  # what a query out of memory beside others does
            held.set()
            release.wait(10)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.to_thread.run_sync, hold_the_memory))
            await trio.to_thread.run_sync(held.wait)
            with pytest.raises(QueryTimeout):
                await engine.fetch(endless)
            batches = engine.stream(
                endless, {}, site_id="example.com", start=start, end=start + DAY
            )
            with pytest.raises(QueryTimeout):
                await anext(batches)
            await batches.aclose()
            release.set()
        with trio.fail_after(5):  # the only query thread is free: neither query ran
            assert await engine.fetch("SELECT 2") == (["2"], [(2,)])
    finally:
        release.set()
        engine.close()


async def test_the_health_check_does_not_wait_behind_queries(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    layout.create()
    engine = QueryEngine(layout, max_concurrent=1)
    release = threading.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine._threads.run, release.wait)  # every query thread busy
            await trio.sleep(0.05)
            with trio.fail_after(2):
                assert await engine.ping()
            release.set()
    finally:
        release.set()
        engine.close()


def test_a_query_out_of_memory_waits_for_those_running_and_holds_back_new_ones() -> None:
    gate = MemoryGate()
    log: list[str] = []
    running, alone_waits, newcomer_waits = threading.Event(), threading.Event(), threading.Event()
    release = threading.Event()

    def beside() -> None:
        with gate.together():
            running.set()
            release.wait(5)
            log.append("beside done")

    def retry() -> None:
        alone_waits.set()
        with gate.alone():
            log.append("alone")
            newcomer_waits.wait(5)
            log.append("alone done")

    def newcomer() -> None:
        newcomer_waits.set()
        with gate.together():
            log.append("newcomer")

    threads = [threading.Thread(target=beside)]
    threads[0].start()
    running.wait(5)
    threads.append(threading.Thread(target=retry))
    threads[1].start()
    alone_waits.wait(5)
    time.sleep(0.2)  # until it waits inside alone(), holding back newcomers
    threads.append(threading.Thread(target=newcomer))
    threads[2].start()
    newcomer_waits.wait(5)
    release.set()
    for thread in threads:
        thread.join(5)
    assert log == ["beside done", "alone", "alone done", "newcomer"]


async def test_a_query_cancelled_while_queued_never_runs() -> None:
    """It would run with the unflushed events it took when it was sent, long after."""
    threads = QueryThreads(1)
    release, ran = threading.Event(), []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(threads.run, release.wait)  # holds the only thread
        await trio.sleep(0.05)
        with trio.move_on_after(0.05):
            await threads.run(lambda: ran.append("late"))
        release.set()
    await threads.run(lambda: ran.append("next"))
    assert threads.close(timeout=5)
    assert ran == ["next"]


def test_a_handoff_releases_after_the_call_that_outlives_its_caller() -> None:
    handoff = Handoff()
    released: list[str] = []
    handoff.resources.callback(released.append, "released")
    started, finish = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        finish.wait()
        return "done"

    worker = threading.Thread(target=handoff.call(slow))
    worker.start()
    started.wait()
    handoff.give_up()  # the caller stopped waiting while the call runs
    assert released == []
    finish.set()
    worker.join()
    assert released == ["released"]
    late = handoff.call(lambda: released.append("ran late"))
    with pytest.raises(RuntimeError):
        late()
    assert released == ["released"]


def _site_lock_is_free(layout: DataLayout, site_id: str) -> bool:
    fd = os.open(layout.events / f"site_id={site_id}" / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


async def test_an_export_that_cannot_start_in_time_times_out_and_keeps_no_lock(
    tmp_path: Path,
) -> None:
    """It would read unflushed events it took long ago; and a lock it took after
    giving up would block every compaction swap of the site from then on."""
    layout = DataLayout(tmp_path)
    layout.create()
    (layout.events / "site_id=example.com").mkdir()
    engine = QueryEngine(layout, timeout=0.3, max_concurrent=1)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def export() -> AsyncIterator[pa.RecordBatch]:
        return engine.stream(
            "SELECT * FROM source", {}, site_id="example.com", start=start, end=start + DAY
        )

    async def first_batch_in_time() -> None:
        with trio.fail_after(5):  # a failure, not a hang, if the engine has no time limit
            await anext(export())

    try:
        # waiting for the lock of a compaction swap
        with site_lock(layout, "example.com", exclusive=True), pytest.raises(QueryTimeout):
            await first_batch_in_time()
        assert await engine.fetch("SELECT 1") == (["1"], [(1,)])  # the late call has ended
        assert _site_lock_is_free(layout, "example.com")

        release = threading.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine._threads.run, release.wait)  # every query thread busy
            await trio.sleep(0.05)
            with pytest.raises(QueryTimeout):
                await first_batch_in_time()
            release.set()
        batches = [batch async for batch in export()]
        assert sum(b.num_rows for b in batches) == 0
        assert _site_lock_is_free(layout, "example.com")
    finally:
        engine.close()


async def test_an_export_read_slowly_leaves_the_site_to_compaction(tmp_path: Path) -> None:
    """Its rows are sorted before the first batch: the lock goes, the rest still comes."""
    layout = DataLayout(tmp_path)
    layout.create()
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    stamps = [int(start.timestamp() * 1e6) + i for i in range(50)]
    folder = layout.partition("example.com", day_number(start.date()))
    folder.mkdir(parents=True)
    for part in range(5):
        events = [make_event(site_id="example.com", timestamp=t) for t in stamps[part::5]]
        pq.write_table(events_to_table(events), folder / f"part-{part}.parquet")
    engine = QueryEngine(layout)
    sql = "SELECT timestamp FROM source ORDER BY timestamp"
    batches = engine.stream(
        sql, {}, site_id="example.com", start=start, end=start + DAY, batch_rows=7
    )
    try:
        first = await anext(batches)
        assert _site_lock_is_free(layout, "example.com")  # while the client reads slowly
        with trio.fail_after(10):  # a swap, which needs the lock alone
            await trio.to_thread.run_sync(partial(compact, layout, before=start.date() + DAY))
        assert len(list(folder.glob("*.parquet"))) == 1
        rest = [batch async for batch in batches]
    finally:
        await batches.aclose()
        engine.close()
    read = [t for batch in [first, *rest] for t in batch.column(0).to_pylist()]
    assert [int(t.timestamp() * 1e6) for t in read] == stamps


async def test_a_query_over_its_time_is_interrupted(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    layout.create()
    engine = QueryEngine(layout, timeout=0.3, max_concurrent=1)
    try:
        with pytest.raises(QueryTimeout, match=r"longer than 0\.3 s"):
            await engine.fetch("SELECT count(*) FROM range(1000000000000)")
        with trio.fail_after(10):  # its thread is free again: DuckDB stopped it
            assert await engine.fetch("SELECT 2") == (["2"], [(2,)])
    finally:
        engine.close()


async def test_closing_waits_for_an_interrupted_query_to_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Shutdown cancels a running query and closes the engine at once: DuckDB refused
    to close while the interrupted query had not stopped yet (ResourceInUseException)."""
    layout = DataLayout(tmp_path)
    layout.create()
    engine = QueryEngine(layout)
    with trio.move_on_after(0.3):
        await engine.fetch("SELECT count(*) FROM range(1000000000000)")
    engine.close()
    assert "DuckDB left open" not in caplog.text


async def test_a_query_for_revenue_times_out_like_any_other(tmp_path: Path) -> None:
    """Its currencies are looked up too; the timeout still reaches the caller as itself
    (an error handler answers it with a 503), not inside an exception group."""
    layout = DataLayout(tmp_path)
    layout.create()
    engine = QueryEngine(layout, timeout=0)
    query = parse_query({"site_id": "a.com", "metrics": ["total_revenue"], "date_range": "7d"})
    try:
        with pytest.raises(QueryTimeout):
            await run_query(engine, query)
    finally:
        engine.close()


def test_closing_threads_says_when_a_call_runs_on() -> None:
    threads = QueryThreads(1)
    started, release = threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        release.wait()

    runner = threading.Thread(target=trio.run, args=(threads.run, work))
    runner.start()
    try:
        assert started.wait(5)
        assert not threads.close(timeout=0.1)
    finally:
        release.set()
        runner.join()


def test_file_shapes_read_each_footer_once_and_forget_beyond_their_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = events_to_table([make_event()])
    paths = []
    for index in range(5):
        paths.append(str(tmp_path / f"{index}.parquet"))
        pq.write_table(ours if index else ours.select(["visitor_id", "site_id"]), paths[-1])
    read = engine_module._shape
    reads: list[str] = []
    monkeypatch.setattr(engine_module, "_shape", lambda p: reads.append(p) or read(p))
    monkeypatch.setattr(FileShapes, "LIMIT", 3)
    shapes = FileShapes()
    assert shapes.foreign(paths).keys() == {paths[0]}
    assert shapes.foreign(paths[:2]).keys() == {paths[0]}  # remembered, then the rest forgotten
    assert len(reads) == 5
    assert shapes.foreign(paths).keys() == {paths[0]}
    assert reads[5:] == paths[2:]
