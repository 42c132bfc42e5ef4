"""Exports: Arrow batches to CSV, JSON lines or Parquet bytes, chunk by chunk.

Encoders take one record batch at a time and return the bytes to send, so an
export of any size streams in constant memory. CSV cells that a spreadsheet
would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or CR)
are prefixed with a single quote.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mallard.query.model import Query
from mallard.query.sql import Parameters, base_ctes, filter_sql
from mallard.storage.schema import EVENT_SCHEMA

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}


def events_sql(query: Query) -> tuple[str, dict[str, Any]]:
    """The raw events of the query's site, range and filters, oldest first."""
    params = Parameters()
    where = " AND ".join(filter_sql(item, params, query.timezone) for item in query.filters)
    sessions = bool(query.filters)  # filters may name visit dimensions
    columns = ", ".join(EVENT_SCHEMA.names)
    sql = (
        base_ctes(query, params, sessions=sessions)
        + f"\nSELECT {columns} FROM rows WHERE {where or 'TRUE'} ORDER BY timestamp"
    )
    return sql, params.values


COUNT_METRICS = frozenset({"visitors", "visits", "pageviews", "events"})


def aggregate_batch(dimension: str, metrics: list[str], results: list[dict]) -> pa.RecordBatch:
    """Rows of a Stats API answer as a batch: the dimension as text, counts as integers
    and every other metric as a float, however many rows (none too) and whatever values."""
    schema = pa.schema(
        [pa.field(dimension, pa.string())]
        + [pa.field(m, pa.int64() if m in COUNT_METRICS else pa.float64()) for m in metrics]
    )
    columns = list(zip(*(row["dimensions"] + row["metrics"] for row in results), strict=True))
    return pa.RecordBatch.from_arrays(
        [pa.array(column, field.type) for column, field in zip(columns, schema, strict=True)]
        if columns
        else [pa.array([], field.type) for field in schema],
        schema=schema,
    )


def safe_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


class CsvEncoder:
    def __init__(self) -> None:
        self._header_sent = False

    def __call__(self, batch: pa.RecordBatch) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if not self._header_sent:
            writer.writerow(batch.schema.names)
            self._header_sent = True
        for row in zip(*(column.to_pylist() for column in batch.columns), strict=True):
            writer.writerow([safe_cell(value) for value in row])
        return buffer.getvalue().encode()

    def finish(self) -> bytes:
        return b""


class JsonLinesEncoder:
    def __call__(self, batch: pa.RecordBatch) -> bytes:
        lines = [
            json.dumps(row, default=_json_default, ensure_ascii=False) for row in batch.to_pylist()
        ]
        return ("\n".join(lines) + "\n").encode() if lines else b""

    def finish(self) -> bytes:
        return b""


class _Sink(io.RawIOBase):
    """A write-only file that hands over what was written since the last ``take``."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data


# Raw events in the types Mallard stores (DuckDB names the zone Etc/UTC), every column
# nullable: another tool's file in the range may lack one.
EXPORT_SCHEMA = pa.schema([field.with_nullable(True) for field in EVENT_SCHEMA])


class ParquetEncoder:
    """One row group per batch, ZSTD; the footer comes with :meth:`finish`."""

    def __init__(self) -> None:
        self._sink = _Sink()
        self._writer: pq.ParquetWriter | None = None

    def __call__(self, batch: pa.RecordBatch) -> bytes:
        if batch.schema.names == EXPORT_SCHEMA.names:
            batch = batch.cast(EXPORT_SCHEMA)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._sink, batch.schema, compression="zstd")
        self._writer.write_batch(batch)
        return self._sink.take()

    def finish(self) -> bytes:
        if self._writer is not None:
            self._writer.close()
        return self._sink.take()


ENCODERS: dict[str, Callable[[], CsvEncoder | JsonLinesEncoder | ParquetEncoder]] = {
    "csv": CsvEncoder,
    "json": JsonLinesEncoder,
    "parquet": ParquetEncoder,
}
