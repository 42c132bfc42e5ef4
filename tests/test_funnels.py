"""Funnels counted from the per-day funnel steps, piece by piece, without a server.

The end-to-end comparisons with the reference are in tests/test_pairs.py and
tests/test_query_reference.py; these check the parts they rely on: row groups
of one value, which row groups a funnel reads, the arrays' counting rules.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mallard.query import funnels
from mallard.storage.parquet import write_grouped
from mallard.storage.schema import STEP_SCHEMA

VALUES = ["/", "/blo", "/blog", "/blog/a", "/blog/b", "/blogger", "/bloh", "/pricing", None]
NAMES = ["click", "pageview", "signup"]


Row = tuple[str, str | None, int | None, int, int]  # kind, value, visitor id, number, time


def step_table(rows: list[Row]) -> pa.Table:
    """``STEP_SCHEMA`` rows, sorted as built."""
    rows = sorted(rows, key=lambda r: (r[0], r[1] is None, r[1] or "", r[2] or 0, r[3], r[4]))
    kinds, values, ids, numbers, times = zip(*rows, strict=True)
    stamps = [dt.datetime.fromtimestamp(us / 1e6, dt.UTC) for us in times]
    return pa.table([kinds, values, ids, numbers, stamps], schema=STEP_SCHEMA)


def random_rows(seed: int, count: int) -> list[Row]:
    """Step rows of 50 visitors, and a visitor row for each."""
    chooser = random.Random(seed)
    weights = [40, 1, 8, 3, 1, 2, 1, 20, 1]  # common values get row groups of their own
    rows: list[Row] = [("visitor", None, 1000 - n, n, 0) for n in range(1, 50)]
    for _ in range(count):
        if chooser.random() < 0.8:
            kind, value = "page", chooser.choices(VALUES, weights)[0]
        else:
            kind, value = "name", chooser.choice([n for n in NAMES if n != "pageview"])
        rows.append((kind, value, None, chooser.randrange(1, 50), chooser.randrange(10**9)))
    return rows


def test_common_values_get_row_groups_of_their_own(tmp_path: Path) -> None:
    table = step_table(random_rows(1, 2_000))
    path = tmp_path / "steps.parquet"
    write_grouped(table, path, ["kind", "value"], own_group=100, max_rows=256)
    file = pq.ParquetFile(path)
    assert file.read().equals(table)
    counts: dict[tuple[str, str | None], int] = {}
    for kind, value in zip(table["kind"].to_pylist(), table["value"].to_pylist(), strict=True):
        counts[kind, value] = counts.get((kind, value), 0) + 1
    common = {key for key, count in counts.items() if count >= 100}
    assert len(common) >= 3
    pure = set()
    for index in range(file.metadata.num_row_groups):
        group = file.metadata.row_group(index)
        assert group.num_rows <= 256
        kinds, values = (group.column(at).statistics for at in (0, 1))
        if values.has_min_max and (kinds.min, values.min) == (kinds.max, values.max):
            pure.add((kinds.min, values.min))
        else:  # a shared group holds no common value
            rows = file.read_row_group(index).to_pylist()
            assert not {(r["kind"], r["value"]) for r in rows} & common
    assert {key for key in common if key[1] is not None} <= pure


STEP_SETS = [
    "page:/,page:/pricing",
    "page:/blog*,page:/blog",  # a prefix next to values that only look alike
    "page:/blo*,event:signup,page:/bloh",
    "event:pageview,page:/,event:click",  # every pageview
    "page:/missing,page:/zzz*,event:none",  # nothing
]


@pytest.mark.parametrize("text", STEP_SETS)
@pytest.mark.parametrize("own_group", [1, 50, 10_000])  # all pure, some, none
def test_steps_read_are_the_rows_each_step_matches(
    tmp_path: Path, text: str, own_group: int
) -> None:
    rows = random_rows(2, 3_000)
    path = tmp_path / "steps.parquet"
    write_grouped(step_table(rows), path, ["kind", "value"], own_group=own_group, max_rows=300)
    steps = funnels.parse_steps(text)

    def matches(step: funnels.FunnelStep, kind: str, value: str | None) -> bool:
        if step.kind == "event":
            return (
                kind == "page"
                if step.value == "pageview"
                else (kind, value) == ("name", step.value)
            )
        if kind != "page" or value is None:
            return False
        return value.startswith(step.prefix) if step.prefix is not None else value == step.value

    expected = sorted(
        (sum(1 << i for i, s in enumerate(steps) if matches(s, kind, value)), number, us)
        for kind, value, _, number, us in rows
        if any(matches(s, kind, value) for s in steps)
    )
    plan = funnels._plan_steps(str(path), steps)
    got = [
        (bits if isinstance(bits, int) else bits[index], number, us)
        for bits, numbers, times in funnels._read_steps(plan, steps)
        for index, (number, us) in enumerate(zip(numbers.tolist(), times.tolist(), strict=True))
    ]
    assert sorted(got) == expected
    assert len(got) <= plan.rows <= len(rows)


@pytest.mark.parametrize("own_group", [1, 10_000])
def test_visitor_rows_give_the_numbers_of_visitor_ids(tmp_path: Path, own_group: int) -> None:
    path = tmp_path / "steps.parquet"
    write_grouped(
        step_table(random_rows(3, 500)), path, ["kind", "value"], own_group=own_group, max_rows=16
    )
    wanted = np.array([5, 951, 952, 990, 2000], np.int64)  # visitor n has id 1000 - n
    plan = funnels._plan_steps(str(path), funnels.parse_steps("page:/,page:/pricing"))
    positions, numbers = funnels._visitor_numbers(plan, wanted)
    assert positions.tolist() == [1, 2, 3] and numbers.tolist() == [49, 48, 10]


def test_a_step_may_be_in_a_row_group_only_where_its_values_lie() -> None:
    blog = funnels.FunnelStep("page", "/blog*")
    assert blog.may_hold(("page", "page"), ("/a", "/blog"))
    assert blog.may_hold(("page", "page"), ("/blog/x", "/zzz"))
    assert not blog.may_hold(("page", "page"), ("/a", "/bloc"))
    assert not blog.may_hold(("page", "page"), ("/bloh", "/zzz"))  # after every /blog…
    assert not blog.may_hold(("name", "name"), ("/blog", "/blog"))
    signup = funnels.FunnelStep("event", "signup")
    assert signup.may_hold(("name", "page"), ("/", "z"))
    assert not signup.may_hold(("page", "page"), ("signup", "signup"))
    assert funnels.FunnelStep("event", "pageview").may_hold(("page", "page"), ("/a", "/b"))


def count(events: list[tuple[int, int, int]], steps: int, window_us: int = 100) -> list[int]:
    """Visitors per step of (visitor number, steps matched, time) events."""
    numbers, matched, times = (np.array(column, np.int64) for column in zip(*events, strict=True))
    middle = len(events) // 2  # in two parts
    parts = [(matched[:middle], numbers[:middle], times[:middle])]
    parts.append((matched[middle:], numbers[middle:], times[middle:]))
    return funnels.count_visitors(parts, steps, window_us)


def test_each_step_is_reached_after_the_one_before_within_the_window() -> None:
    a, b, c = 1, 2, 4  # the bits of steps 1, 2 and 3
    assert count([(0, a, 10), (0, b, 20), (0, c, 30)], 3) == [1, 1, 1]
    assert count([(0, b, 5), (0, a, 10), (0, c, 30)], 3) == [1, 0, 0]  # step 2 came first
    assert count([(0, a, 10), (0, b, 20), (0, c, 111)], 3) == [1, 1, 0]  # after the window
    assert count([(0, a, 10), (0, a, 50), (0, b, 20), (0, c, 110)], 3) == [1, 1, 1]  # first entry
    assert count([(0, a, 10), (1, b, 20), (1, a, 30)], 2) == [2, 0]
    assert count([(0, a | b, 10)], 2) == [1, 0]  # one event is not two steps
    assert count([(0, a, 10), (0, b, 10)], 2) == [1, 1]  # two events at the same time are


@pytest.mark.parametrize("spread", [1, 10**15])  # numbers in a table, or sorted
def test_visitors_are_told_apart_by_their_numbers(spread: int) -> None:
    a, b = 1, 2
    events = [(5 * spread, a, 10), (7 * spread, a, 10), (5 * spread, b, 20), (9 * spread, b, 30)]
    assert count(events, 2) == [2, 1]  # visitor 9 never entered
