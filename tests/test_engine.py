"""The query engine's resources: memory limit, spilling, its temporary folder, its threads."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import trio

from mallard.query.engine import QueryEngine
from mallard.query.threads import QueryThreads
from mallard.storage.layout import DataLayout


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
    threads.close()
    assert ran == ["next"]
