"""Threads for DuckDB work that give the CPU to ingestion first.

Queries run in their own threads with a lower scheduling priority (a higher
nice value, which Linux keeps per thread), DuckDB's internal pool included. A
heavy query then slows other queries, not the event loop that answers
``/api/event``: on a small machine the cores are shared, the priority is not.
Elsewhere than Linux the threads run at normal priority.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import trio

NICENESS = 19
T = TypeVar("T")


def lower_priority(thread_ids: set[int]) -> None:
    """Raise the nice value of these threads (of this process); best effort."""
    if sys.platform != "linux":
        return
    for thread_id in thread_ids:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, thread_id, NICENESS)


def thread_ids() -> set[int]:
    """The ids of this process's threads (Linux), for :func:`lower_priority`."""
    try:
        return {int(name) for name in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def _lower_own_priority() -> None:
    lower_priority({threading.get_native_id()})


def low_priority_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads have the query threads' low priority."""
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=_lower_own_priority)


class QueryThreads:
    """At most ``workers`` blocking calls at once, in low-priority threads, awaited from trio."""

    def __init__(self, workers: int) -> None:
        self._executor = low_priority_pool(workers, "mallard-query")
        self._calls = 0  # running or queued
        self._finished = threading.Condition()

    async def run(self, function: Callable[[], T]) -> T:
        """Run ``function`` in a query thread; cancelling abandons it (the caller stops it
        if it runs, and it never starts if it is still queued)."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        with self._finished:
            self._calls += 1
        future = self._executor.submit(function)
        future.add_done_callback(self._count_out)
        future.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        return future.result()

    def _count_out(self, _: Future[T]) -> None:
        with self._finished:
            self._calls -= 1
            self._finished.notify_all()

    def close(self, timeout: float) -> bool:
        """Run nothing more; True once the calls running have ended, False if some still
        run after ``timeout`` seconds."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._finished:
            return self._finished.wait_for(lambda: self._calls == 0, timeout)


class Handoff:
    """What calls in query threads use (a cursor, a lock…), released by whoever is last.

    The trio task that stops waiting for a call (cancelled, timed out) may
    :meth:`give_up` while the call still runs in its thread: the call then
    releases ``resources`` when it ends, and calls that had not started yet
    never run.
    """

    def __init__(self) -> None:
        self.resources = contextlib.ExitStack()
        self._mutex = threading.Lock()
        self._running = False
        self._given_up = False

    def call(self, function: Callable[[], T]) -> Callable[[], T]:
        """``function`` wrapped to run in a query thread under this handoff."""

        def run() -> T:
            with self._mutex:
                if self._given_up:
                    raise RuntimeError("given up before it started")
                self._running = True
            try:
                return function()
            finally:
                with self._mutex:
                    self._running = False
                    release = self._given_up
                if release:
                    self.resources.close()

        return run

    @property
    def given_up(self) -> bool:
        with self._mutex:
            return self._given_up

    def give_up(self) -> None:
        """Release the resources now, or when the running call ends."""
        with self._mutex:
            self._given_up = True
            running = self._running
        if not running:
            self.resources.close()


class MemoryGate:
    """Turns at a memory budget that queries share (DuckDB's ``memory_limit``).

    Queries run side by side (:meth:`together`); one that ran out of memory
    because of the others runs again :meth:`alone`: it waits for those running
    to finish, and holds back the next ones while it runs.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running = 0
        self._alone = False

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._alone)
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._alone)
            self._alone = True
            self._changed.wait_for(lambda: self._running == 0)
        try:
            yield
        finally:
            with self._changed:
                self._alone = False
                self._changed.notify_all()
