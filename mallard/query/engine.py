"""DuckDB over the event files, run in worker threads so the event loop stays free."""

from __future__ import annotations

import threading
from typing import Any

import duckdb
import trio

from mallard.storage.layout import DataLayout


class QueryEngine:
    """One DuckDB database per server; each query runs on its own cursor in a thread."""

    def __init__(self, layout: DataLayout, *, max_concurrent: int = 4) -> None:
        self.layout = layout
        self._database = duckdb.connect(":memory:")
        self._lock = threading.Lock()
        self._limiter = trio.CapacityLimiter(max_concurrent)

    def _run(self, sql: str, parameters: list[Any] | None) -> list[tuple[Any, ...]]:
        with self._lock:
            cursor = self._database.cursor()
        try:
            return cursor.execute(sql, parameters or []).fetchall()
        finally:
            cursor.close()

    async def fetchall(
        self, sql: str, parameters: list[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        return await trio.to_thread.run_sync(self._run, sql, parameters, limiter=self._limiter)

    async def ping(self) -> bool:
        """True when DuckDB answers a trivial query."""
        try:
            return await self.fetchall("SELECT 42") == [(42,)]
        except duckdb.Error:
            return False

    def close(self) -> None:
        self._database.close()
