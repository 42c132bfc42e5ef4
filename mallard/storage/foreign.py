"""Event files that other tools placed in the layout (a restore, an import, a user's
own pipeline), read as Mallard's own."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mallard.query.sql import events_select, file_list
from mallard.storage.schema import EVENT_SCHEMA, is_event_schema, unconvertible

REQUIRED_COLUMNS = {column.name for column in EVENT_SCHEMA if not column.nullable}
# what reading a file that does not hold events raises (the cast of a column among them)
NOT_EVENTS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


def read_as_events(file: Path) -> pa.Table:
    """One file in EVENT_SCHEMA, another tool's read as queries read it
    (:func:`mallard.query.sql.events_select`); raises one of ``NOT_EVENTS`` saying
    what keeps it out."""
    schema = pq.read_schema(file)
    if is_event_schema(schema):
        table = pq.read_table(file)
    else:
        if reason := unconvertible(schema):
            raise pa.ArrowInvalid(reason)
        if missing := REQUIRED_COLUMNS - {"site_id", *schema.names}:  # site_id: the partition's
            raise pa.ArrowInvalid(f"no {min(missing)} column, which every event needs")
        read = f"SELECT {events_select(schema)} FROM read_parquet({file_list([str(file)])}, "
        with duckdb.connect(config={"threads": 1}) as connection:
            try:
                table = connection.sql(read + "hive_partitioning = true)").to_arrow_table()
            except duckdb.Error as error:  # a value beyond its column, e.g. an amount of 1e20
                raise pa.ArrowInvalid(str(error).splitlines()[0]) from None
    for name in REQUIRED_COLUMNS:
        if empty := table.column(name).null_count:
            raise pa.ArrowInvalid(f"{name} is empty in {empty} rows")
    return table.cast(EVENT_SCHEMA)
