"""The Stats API over HTTP: hand-computed answers, validation, read-your-writes."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import string
import urllib.parse
from decimal import Decimal
from typing import Any

import pyarrow.parquet as pq
import pytest

from mallard.storage.layout import DataLayout
from mallard.storage.parquet import write_batch
from mallard.storage.schema import EVENT_SCHEMA, Event, events_to_table
from tests.conftest import SEED_EVENT, RunningServer
from tests.factories import make_event

SITE = "shop.example"
D = dt.date(2026, 1, 10)
NEXT = D + dt.timedelta(days=1)


def at(day: dt.date, hh: int, mm: int) -> int:
    moment = dt.datetime.combine(day, dt.time(hh, mm), dt.UTC)
    return int(moment.timestamp() * 1_000_000)


def event(visitor: int, ts: int, path: str, name: str = "pageview", **fields: Any) -> Event:
    defaults = {"hostname": SITE, "country_code": "DE", "device_type": "Desktop"}
    return make_event(
        **{**defaults, **fields},
        site_id=SITE, visitor_id=visitor, timestamp=ts, event_name=name, pathname=path,
    )  # fmt: skip


# The story (UTC), with what it means for each visit:
EVENTS = [
    # visitor 1, visit A: / (from Google) -> /pricing -> signup. 360 s, not a bounce.
    event(1, at(D, 10, 0), "/", referrer_source="Google"),
    event(1, at(D, 10, 5), "/pricing", referrer_source="Google"),
    event(1, at(D, 10, 6), "/pricing", "signup", props='{"plan":"pro"}'),
    # visitor 1, visit B: 54 minutes later, direct, one page: a bounce.
    event(1, at(D, 11, 0), "/blog"),
    # visitor 2, visit C: from Bing, in France, one page: a bounce.
    event(2, at(D, 10, 30), "/", referrer_source="Bing", country_code="FR"),
    # visitor 3, visit D: 23:50, and 00:10 the next day: visits end at UTC midnight.
    event(3, at(D, 23, 50), "/"),
    event(3, at(NEXT, 0, 10), "/docs"),
    # visitor 4, visit E: a pageview and a purchase a minute later: not a bounce.
    event(4, at(D, 12, 0), "/pricing"),
    event(
        4,
        at(D, 12, 1),
        "/pricing",
        "purchase",
        revenue_amount=Decimal("10.00"),
        revenue_currency="USD",
    ),
]


@pytest.fixture
async def stats_server(start_server: Any, tmp_path: Any) -> RunningServer:
    data_dir = tmp_path / "stats"
    layout = DataLayout(data_dir)
    layout.create()
    write_batch(events_to_table(EVENTS), layout, "test-00000000")
    return await start_server(data_dir=data_dir)


async def query(server: RunningServer, **body: Any) -> dict[str, Any]:
    body.setdefault("site_id", SITE)
    body.setdefault("date_range", [D.isoformat(), D.isoformat()])
    response = await server.client.post(f"{server.url}/api/v2/query", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def metrics(answer: dict[str, Any]) -> list[Any]:
    [row] = answer["results"]
    return row["metrics"]


def table(answer: dict[str, Any]) -> dict[tuple[str, ...], list[Any]]:
    return {tuple(row["dimensions"]): row["metrics"] for row in answer["results"]}


ALL = ["visitors", "visits", "pageviews", "events", "bounce_rate", "visit_duration",
       "views_per_visit", "total_revenue"]  # fmt: skip


async def test_one_day(stats_server: RunningServer) -> None:
    # Day D alone: visit D is cut at midnight, so it is a one-page bounce there.
    # visits A B C D E; bounces B C D -> 60 %; durations 360 0 0 0 60 -> 84 s.
    answer = await query(stats_server, metrics=ALL)
    assert metrics(answer) == [4, 5, 6, 8, 60, 84, 1.2, 10.0]


async def test_two_days_split_the_midnight_visit(stats_server: RunningServer) -> None:
    # Visitor 3 is one visitor with two one-page visits, D1 and D2, one per UTC day:
    # visits A B C D1 D2 E; bounces B C D1 D2 -> 67 %; durations 360 0 0 0 0 60 -> 70 s;
    # 7 pageviews over 6 visits.
    answer = await query(stats_server, metrics=ALL, date_range=[D.isoformat(), NEXT.isoformat()])
    assert metrics(answer) == [4, 6, 7, 9, 67, 70, 1.17, 10.0]


async def test_daily_timeseries_counts_each_days_visits(
    stats_server: RunningServer,
) -> None:
    answer = await query(
        stats_server,
        metrics=["visitors", "visits", "pageviews"],
        dimensions=["time:day"],
        date_range=[D.isoformat(), NEXT.isoformat()],
        include={"time_labels": True},
    )
    assert table(answer) == {("2026-01-10",): [4, 5, 6], ("2026-01-11",): [1, 1, 1]}
    assert answer["meta"]["time_labels"] == ["2026-01-10", "2026-01-11"]


async def test_timezone_moves_day_boundaries(stats_server: RunningServer) -> None:
    # In Berlin (UTC+1) day D ends at 23:00 UTC: visitor 3's 23:50 event is on the 11th.
    answer = await query(stats_server, metrics=["visitors", "pageviews"], timezone="Europe/Berlin")
    assert metrics(answer) == [3, 5]
    hours = await query(
        stats_server, metrics=["pageviews"], dimensions=["time:hour"], timezone="Europe/Berlin"
    )
    assert len(hours["results"]) == 24  # gaps filled with zeros
    assert table(hours)[("2026-01-10 11:00:00",)] == [3]  # pageviews at 10:00, 10:05, 10:30 UTC


async def test_sources_breakdown(stats_server: RunningServer) -> None:
    answer = await query(stats_server, metrics=["visitors", "visits"], dimensions=["visit:source"])
    assert [row["dimensions"][0] for row in answer["results"]] == ["(none)", "Bing", "Google"]
    assert table(answer) == {("(none)",): [3, 3], ("Bing",): [1, 1], ("Google",): [1, 1]}


async def test_entry_and_exit_pages(stats_server: RunningServer) -> None:
    entries = await query(stats_server, metrics=["visits"], dimensions=["visit:entry_page"])
    assert table(entries) == {("/",): [3], ("/blog",): [1], ("/pricing",): [1]}
    exits = await query(
        stats_server,
        metrics=["visits"],
        dimensions=["visit:exit_page"],
        date_range=[D.isoformat(), NEXT.isoformat()],
    )
    # visitor 3 leaves from "/" on day D and from "/docs" after midnight
    assert table(exits) == {("/pricing",): [2], ("/blog",): [1], ("/",): [2], ("/docs",): [1]}


async def test_visit_filter_keeps_whole_visits(stats_server: RunningServer) -> None:
    answer = await query(
        stats_server,
        metrics=["visitors", "pageviews", "events", "visits", "bounce_rate"],
        filters=[["is", "visit:source", ["Google"]]],
    )
    assert metrics(answer) == [1, 2, 3, 1, 0]


async def test_event_filter_keeps_visits_with_that_event(stats_server: RunningServer) -> None:
    # /pricing was seen in visits A (360 s) and E (60 s): duration (360 + 60) / 2.
    answer = await query(
        stats_server,
        metrics=["visitors", "pageviews", "visits", "bounce_rate", "visit_duration"],
        filters=[["is", "event:page", ["/pricing"]]],
    )
    assert metrics(answer) == [2, 2, 2, 0, 210]


async def test_filter_operators_and_combinations(stats_server: RunningServer) -> None:
    async def visitors(*filters: Any) -> int:
        return metrics(await query(stats_server, metrics=["visitors"], filters=list(filters)))[0]

    assert await visitors(["is_not", "visit:country", ["FR"]]) == 3
    assert await visitors(["contains", "event:page", ["pric"]]) == 2
    assert await visitors(["contains", "event:page", ["PRIC"], {"case_sensitive": False}]) == 2
    # several values are one regular expression: each must still match only itself
    literal = ["PRIC", ".", "(x", "[", "\\E", "x{0}", "|"]
    assert await visitors(["contains", "event:page", literal, {"case_sensitive": False}]) == 2
    assert await visitors(["contains", "event:page", ["blog", "/pricing"]]) == 2
    assert await visitors(["contains_not", "event:page", ["pric", "blog"]]) == 3
    # many values: several patterns, each small enough for RE2; a huge value alone
    rng = random.Random(1)
    paths = ["/" + "".join(rng.choices(string.ascii_letters, k=30)) for _ in range(25_000)]
    assert await visitors(["contains", "event:page", [*paths, "x" * 20_000, "pric"]]) == 2
    assert await visitors(["matches", "event:page", ["^/(blog|docs)$"]]) == 1
    assert (
        await visitors(["or", [["is", "visit:country", ["FR"]], ["is", "event:page", ["/blog"]]]])
        == 2
    )
    assert await visitors(["not", ["is", "visit:source", ["(none)"]]]) == 2
    assert await visitors(["is", "event:props:plan", ["pro"]]) == 1


async def test_goal_conversion_and_revenue(stats_server: RunningServer) -> None:
    signup = await query(
        stats_server,
        metrics=["visitors", "conversion_rate"],
        filters=[["is", "event:goal", ["signup"]]],
    )
    assert metrics(signup) == [1, 25.0]
    assert signup["meta"] == {}  # no revenue metric asked
    goals = await query(
        stats_server,
        metrics=["visitors", "events", "total_revenue", "conversion_rate"],
        dimensions=["event:goal"],
    )
    assert table(goals) == {
        ("pageview",): [4, 6, 0.0, 100.0],
        ("purchase",): [1, 1, 10.0, 25.0],
        ("signup",): [1, 1, 0.0, 25.0],
    }


async def test_revenue_names_its_currencies(server: RunningServer) -> None:
    for name, amount, currency in [("purchase", 10, "USD"), ("donation", 5, "EUR")]:
        body = {**SEED_EVENT, "n": name, "ra": amount, "rc": currency}
        assert (await server.post_event(body)).status_code == 202
    revenue = {"site_id": "example.com", "date_range": "day", "metrics": ["total_revenue"]}
    mixed = await query(server, **revenue)
    assert metrics(mixed) == [15.0]
    assert mixed["meta"]["revenue_currencies"] == ["EUR", "USD"]
    warning = mixed["meta"]["metric_warnings"]["total_revenue"]
    assert warning["code"] == "several_currencies"
    assert "EUR, USD are added as they are" in warning["warning"]
    purchase = ["is", "event:goal", ["purchase"]]
    for filters in ([purchase], [purchase, ["is", "visit:source", ["(none)"]]]):
        purchases = await query(server, **revenue, filters=filters)
        assert metrics(purchases) == [10.0]
        assert purchases["meta"] == {"revenue_currencies": ["USD"]}
    tip = {**SEED_EVENT, "n": "tip", "ra": 2}  # the spec makes rc optional
    assert "rc" not in tip
    assert (await server.post_event(tip)).status_code == 202
    with_tip = await query(server, **revenue)
    assert metrics(with_tip) == [17.0]
    assert with_tip["meta"]["revenue_currencies"] == ["EUR", "USD", None]
    warning = with_tip["meta"]["metric_warnings"]["total_revenue"]["warning"]
    assert warning.startswith("amounts in EUR, USD and without a currency are added")


async def test_props_breakdown_and_percentage(stats_server: RunningServer) -> None:
    answer = await query(
        stats_server, metrics=["visitors", "events", "percentage"], dimensions=["event:props:plan"]
    )
    assert table(answer) == {("(none)",): [4, 7, 100.0], ("pro",): [1, 1, 25.0]}


async def test_order_pagination_total_rows(stats_server: RunningServer) -> None:
    answer = await query(
        stats_server,
        metrics=["pageviews"],
        dimensions=["event:page"],
        order_by=[["event:page", "desc"]],
        pagination={"limit": 2, "offset": 1},
        include={"total_rows": True},
    )
    assert [row["dimensions"] for row in answer["results"]] == [["/blog"], ["/"]]
    assert answer["meta"]["total_rows"] == 3


async def test_total_rows_past_the_last_page(stats_server: RunningServer) -> None:
    answer = await query(
        stats_server,
        metrics=["pageviews"],
        dimensions=["event:page"],
        pagination={"limit": 2, "offset": 10},
        include={"total_rows": True},
    )
    assert answer["results"] == []
    assert answer["meta"]["total_rows"] == 3  # /, /pricing, /blog


async def test_every_time_bucket_is_ordered_and_paged(stats_server: RunningServer) -> None:
    """With the time dimension alone, the empty buckets count too: order and pages apply
    to all of them."""
    three_days = [D.isoformat(), (NEXT + dt.timedelta(days=1)).isoformat()]

    async def days(**body: Any) -> tuple[list[Any], int]:
        answer = await query(
            stats_server,
            metrics=["visitors"],
            dimensions=["time:day"],
            date_range=three_days,
            include={"total_rows": True},
            **body,
        )
        return [row["dimensions"] + row["metrics"] for row in answer["results"]], (
            answer["meta"]["total_rows"]
        )

    assert await days(pagination={"limit": 1, "offset": 2}) == ([["2026-01-12", 0]], 3)
    busiest_first = {"order_by": [["visitors", "desc"]]}
    assert await days(**busiest_first, pagination={"limit": 2, "offset": 0}) == (
        [["2026-01-10", 4], ["2026-01-11", 1]],
        3,
    )
    latest_first = {"order_by": [["time:day", "desc"]]}
    assert await days(**latest_first, pagination={"limit": 1, "offset": 0}) == (
        [["2026-01-12", 0]],
        3,
    )


@pytest.mark.parametrize(
    ("date_range", "date", "first", "last", "visitors"),
    [
        ("day", "2026-01-10", "2026-01-10", "2026-01-10", 4),
        ("7d", "2026-01-11", "2026-01-05", "2026-01-11", 4),
        ("7d", "2026-01-09", "2026-01-03", "2026-01-09", 0),
        ("month", "2026-01-20", "2026-01-01", "2026-01-31", 4),
        ("6mo", "2026-01-20", "2025-08-01", "2026-01-31", 4),
        ("year", "2025-03-01", "2025-01-01", "2025-12-31", 0),
        ("all", "2026-01-10", "2026-01-10", "2026-01-10", 4),  # from the first event on
        ("all", "1999-06-01", "1999-06-01", "1999-06-01", 0),  # before anything
    ],
)
async def test_date_moves_a_preset_back(
    stats_server: RunningServer, date_range: str, date: str, first: str, last: str, visitors: int
) -> None:
    answer = await query(stats_server, metrics=["visitors"], date_range=date_range, date=date)
    assert metrics(answer) == [visitors]
    end = (dt.date.fromisoformat(last) + dt.timedelta(days=1)).isoformat()
    assert [moment[:10] for moment in answer["query"]["date_range"]] == [first, end]
    response = await stats_server.client.get(
        f"{stats_server.url}/api/stats/main",
        params={"site_id": SITE, "period": date_range, "date": date, "metrics": "visitors"},
    )
    assert response.json()["results"][0]["metrics"] == [visitors]


async def test_comparison_with_previous_period(stats_server: RunningServer) -> None:
    answer = await query(
        stats_server,
        metrics=["visitors", "bounce_rate"],
        date_range=[NEXT.isoformat(), NEXT.isoformat()],
        include={"comparisons": {"mode": "previous_period"}},
    )
    [row] = answer["results"]
    assert row["metrics"] == [1, 100]  # visitor 3 at 00:10 on the 11th, one page
    assert row["comparison"]["metrics"] == [4, 60]
    assert row["comparison"]["change"] == [-75, 40]  # percent change; bounce rate in points


async def test_comparison_rows_match_by_their_dimensions(stats_server: RunningServer) -> None:
    """Each row is compared with the earlier period's row of the same country, its day as
    far into that period, whatever the order and page of either."""
    answer = await query(
        stats_server,
        metrics=["visitors"],
        dimensions=["time:day", "visit:country"],
        date_range=[NEXT.isoformat(), NEXT.isoformat()],
        order_by=[["visitors", "asc"]],  # the day before: FR (1) comes before DE (3)
        include={"comparisons": {"mode": "previous_period"}},
    )
    [row] = answer["results"]
    assert row["dimensions"] == ["2026-01-11", "DE"]
    assert row["comparison"]["dimensions"] == ["2026-01-10", "DE"]
    assert row["comparison"]["metrics"] == [3]


async def test_a_range_of_hours_is_compared_with_as_many_hours_before(
    stats_server: RunningServer,
) -> None:
    answer = await query(
        stats_server,
        metrics=["pageviews"],
        date_range=["2026-01-10T11:00:00", "2026-01-10T13:00:00"],
        include={"comparisons": {"mode": "previous_period"}},
    )
    assert answer["meta"]["comparison_date_range"] == [
        "2026-01-10T09:00:00+00:00",
        "2026-01-10T11:00:00+00:00",
    ]
    [row] = answer["results"]
    assert row["metrics"] == [2]  # 11:00 /blog and 12:00 /pricing
    assert row["comparison"]["metrics"] == [3]  # 10:00, 10:05 and 10:30


async def test_a_goal_filter_inside_and_is_the_conversion_goal(
    stats_server: RunningServer,
) -> None:
    goal, country = ["is", "event:goal", ["signup"]], ["is", "visit:country", ["DE"]]
    top_level = await query(
        stats_server, metrics=["visitors", "conversion_rate"], filters=[goal, country]
    )
    inside_and = await query(
        stats_server, metrics=["visitors", "conversion_rate"], filters=[["and", [goal, country]]]
    )
    assert metrics(top_level) == metrics(inside_and) == [1, 33.33]  # 1 of visitors 1, 3, 4


INVALID = [
    ({"metrics": ["visitors"], "site_id": "bad/site"}, "site_id"),
    ({"metrics": ["visitors"], "site_id": "a" * 248}, "247"),
    ({"metrics": ["clicks"]}, "clicks"),
    ({"metrics": []}, "metrics"),
    ({"metrics": ["visitors"], "dimensions": ["visit:shoe_size"]}, "visit:shoe_size"),
    ({"metrics": ["visitors"], "date_range": "fortnight"}, "date_range"),
    ({"metrics": ["visitors"], "date_range": ["2026-01-10", "2026-01-01"]}, "date_range"),
    ({"metrics": ["visitors"], "date_range": ["2026-13-01", "2026-01-01"]}, "date_range"),
    ({"metrics": ["visitors"], "timezone": "Mars/Olympus"}, "Mars/Olympus"),
    ({"metrics": ["visitors"], "filters": [["resembles", "event:page", ["/"]]]}, "resembles"),
    ({"metrics": ["visitors"], "filters": [["is", "event:page", "/"]]}, "filters[0]"),
    ({"metrics": ["visitors"], "filters": [["matches", "event:page", ["("]]]}, "regular expr"),
    ({"metrics": ["visitors"], "order_by": [["pageviews", "desc"]]}, "order_by"),
    ({"metrics": ["visitors"], "pagination": {"limit": 0}}, "pagination.limit"),
    ({"metrics": ["visitors"], "pagination": {"limit": 10**6}}, "pagination.limit"),
    ({"metrics": ["conversion_rate"]}, "conversion_rate"),
    ({"metrics": ["visitors"], "colour": "blue"}, "colour"),
    ({"metrics": ["visitors"], "include": {"comparisons": {"mode": "last_week"}}}, "comparisons"),
    # Python accepts these, DuckDB's RE2 (which runs the filter) does not
    ({"metrics": ["visitors"], "filters": [["matches", "event:page", ["(?=x)"]]]}, "regular expr"),
    ({"metrics": ["visitors"], "filters": [["matches", "event:page", ["a{1001}"]]]}, "a{1001}"),
    ({"metrics": ["visitors"], "pagination": {"offset": 10**30}}, "pagination.offset"),
    ({"metrics": ["visitors"], "pagination": {"limit": 5, "page": 2}}, "pagination"),
    ({"metrics": ["visitors"], "include": {"totals": True}}, "totals"),
    ({"metrics": ["visitors"], "timezone": "localtime"}, "localtime"),
    # zone files Python reads but DuckDB, which buckets the times, does not know
    ({"metrics": ["visitors"], "timezone": "right/UTC"}, "right/UTC"),
    ({"metrics": ["visitors"], "timezone": "posix/Europe/Berlin"}, "posix/Europe/Berlin"),
    (
        {
            "metrics": ["visitors"],
            "include": {"comparisons": {"mode": "previous_period", "date_range": "7d"}},
        },
        "comparisons",
    ),
    (
        {
            "metrics": ["visitors"],
            "date_range": ["1970-01-01", "2099-12-31"],
            "include": {"comparisons": {"mode": "previous_period"}},
        },
        "comparison's date_range",
    ),
    (
        {"metrics": ["visitors"], "filters": [["is", "event:page", [f"/{n}"]] for n in range(201)]},
        "201 conditions",
    ),
    (
        {
            "metrics": ["visitors"],
            "filters": [["contains", "event:page", ["a"], {"case_sensitive": "false"}]],
        },
        "case_sensitive",
    ),
    ({"metrics": ["visitors"], "date_range": ["9999-12-01", "9999-12-31"]}, "date_range"),
    ({"metrics": ["visitors"], "date_range": ["2026-01-01", "2100-01-01"]}, "2099-12-31"),
    # 20260101 is a date in ISO's basic format, but as a datetime it would end a day early
    ({"metrics": ["visitors"], "date_range": ["20260101", "20260110"]}, "YYYY-MM-DD"),
    ({"metrics": ["visitors"], "date_range": ["2026-01-01", "2026-01-10T12:00"]}, "two dates"),
    ({"metrics": ["visitors"], "date": "2026-W02-1"}, "date must be"),
    ({"metrics": ["visitors"], "date": "2026-01-10", "date_range": "24h"}, "date does not"),
    (
        {"metrics": ["visitors"], "date": "2026-01-10", "date_range": ["2026-01-01", "2026-01-10"]},
        "date applies",
    ),
    ({"metrics": ["visitors"], "date": "1970-01-03"}, "1970-01-01"),  # 7 days reach 1969
    ({"metrics": ["visitors"], "date_range": ["1969-12-31T00:00", "1970-01-02T00:00"]}, "1970"),
    (
        {
            "metrics": ["visitors"],
            "date_range": ["0001-01-01", "0001-01-31"],
            "include": {"comparisons": {"mode": "year_over_year"}},
        },
        "date_range",
    ),
    (
        {
            "metrics": ["visitors"],
            "dimensions": ["time:hour"],
            "date_range": ["2020-01-01", "2026-01-01"],
        },
        "time:hour",
    ),
    (
        {
            "metrics": ["visitors"],
            "dimensions": ["time:day"],
            "date_range": ["1970-01-01", "2099-12-31"],
        },
        "time:day",
    ),
]


@pytest.mark.parametrize(("body", "named"), INVALID, ids=[n for _, n in INVALID])
async def test_invalid_queries_are_400_naming_the_problem(
    stats_server: RunningServer, body: dict[str, Any], named: str
) -> None:
    body = {"site_id": SITE, "date_range": "7d", **body}
    response = await stats_server.client.post(f"{stats_server.url}/api/v2/query", json=body)
    assert response.status_code == 400
    assert named in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"site_id": "\xff"}', "UTF-8"),
        ('{"site_id": "example.com"}'.encode("utf-16"), "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        (b'{"site_id": "example.com", "metrics": ["visitors"], "x": "\\ud800"}', "surrogate"),
        (b'{"site_id": "example.com", "metrics": ["visitors"], "x": 1e999}', "1e999"),
        (b'{"site_id": "example.com", "metrics": ["visitors"], "x": -Infinity}', "Infinity"),
        (b'{"site_id": "example.com", "filters": [["is", "event:page", [NaN]]]}', "NaN"),
    ],
    ids=[
        "broken",
        "empty",
        "latin-1",
        "utf-16",
        "deep",
        "lone-surrogate",
        "1e999",
        "infinity",
        "nan",
    ],
)
async def test_a_body_that_is_not_json_text_is_400(
    stats_server: RunningServer, body: bytes, named: str
) -> None:
    response = await stats_server.client.post(f"{stats_server.url}/api/v2/query", content=body)
    assert response.status_code == 400
    assert named in response.json()["error"]


async def test_regular_expressions_are_re2s(stats_server: RunningServer) -> None:
    async def visitors(*filters: Any) -> int:
        return metrics(await query(stats_server, metrics=["visitors"], filters=list(filters)))[0]

    assert await visitors(["matches", "event:page", ["^/\\p{L}+$"]]) == 2  # Python refuses \p
    # case-insensitive: RE2's option, not a lower-cased pattern (\D would become \d)
    upper = await visitors(["matches", "event:page", ["^/PRIC\\D+$"], {"case_sensitive": False}])
    assert upper == await visitors(["contains", "event:page", ["/pric"]]) == 2


async def test_read_your_writes(server: RunningServer) -> None:
    async def visitors() -> int:
        response = await server.client.get(
            f"{server.url}/api/stats/main", params={"site_id": "example.com", "period": "day"}
        )
        return response.json()["results"][0]["metrics"][0]

    assert await visitors() == 0
    assert (await server.post_event(SEED_EVENT)).status_code == 202
    assert await visitors() == 1  # not flushed yet, already counted
    realtime = await server.client.get(
        f"{server.url}/api/stats/realtime", params={"site_id": "example.com"}
    )
    assert realtime.json() == {"visitors": 1}
    elsewhere = '[["is", "visit:country", ["ZZ"]]]'
    realtime = await server.client.get(
        f"{server.url}/api/stats/realtime", params={"site_id": "example.com", "filters": elsewhere}
    )
    assert realtime.json() == {"visitors": 0}


PROP_KEYS = ["a/b", "größe", 'q"k', "t~x", "$.x", "emoji 😀"]


async def test_every_property_key_ingestion_keeps_can_be_broken_down(
    server: RunningServer,
) -> None:
    props = {key: f"value of {key}" for key in PROP_KEYS}
    assert (await server.post_event({**SEED_EVENT, "p": json.dumps(props)})).status_code == 202
    params = {"site_id": "example.com", "period": "day"}
    for key in PROP_KEYS:
        response = await server.client.get(
            f"{server.url}/api/stats/breakdown/props/{urllib.parse.quote(key, safe='')}",
            params=params,
        )
        assert response.status_code == 200, response.text
        assert [row["dimensions"] for row in response.json()["results"]] == [[props[key]]]
        filtered = await server.client.get(
            f"{server.url}/api/stats/main",
            params={**params, "filters": json.dumps([["is", f"event:props:{key}", [props[key]]]])},
        )
        assert filtered.json()["results"][0]["metrics"][0] == 1
    control = await server.client.post(
        f"{server.url}/api/v2/query",
        json={
            "site_id": "example.com",
            "metrics": ["visitors"],
            "dimensions": ["event:props:a\nb"],
        },
    )
    assert control.status_code == 400
    assert control.json()["error"] == "unknown dimension 'event:props:a\\nb'"


@pytest.mark.parametrize("page", ["/İstanbul", "/ΣΊΣΥΦΟΣ"])
async def test_case_insensitive_filters_find_the_stored_text(
    server: RunningServer, page: str
) -> None:
    """Both sides are lower-cased by DuckDB: Python's lower() differs for some letters
    ('İ' becomes two characters, a final 'Σ' becomes 'ς')."""
    assert (await server.post_event({**SEED_EVENT, "u": f"https://example.com{page}"})).is_success
    for operator, values in [("is", [page]), ("contains", [page]), ("contains", [page, "/x"])]:
        condition = [operator, "event:page", values, {"case_sensitive": False}]
        answer = await query(
            server, site_id="example.com", date_range="day", metrics=["pageviews"],
            filters=[condition],
        )  # fmt: skip
        assert metrics(answer) == [1], condition


async def test_dashboard_endpoints(stats_server: RunningServer) -> None:
    base = {"site_id": SITE, "period": "custom", "date": f"{D},{NEXT}"}
    client, url = stats_server.client, stats_server.url
    main = (await client.get(f"{url}/api/stats/main", params=base)).json()
    assert main["results"][0]["metrics"][:3] == [4, 6, 7]  # visitor 3: a visit each day
    series = (await client.get(f"{url}/api/stats/timeseries", params=base)).json()
    assert [row["metrics"] for row in series["results"]] == [[4, 6], [1, 1]]
    pages = (
        await client.get(f"{url}/api/stats/breakdown/pages", params={**base, "limit": "2"})
    ).json()
    assert [row["dimensions"][0] for row in pages["results"]] == ["/", "/pricing"]
    assert pages["meta"]["total_rows"] == 4
    plan = (await client.get(f"{url}/api/stats/breakdown/props/plan", params=base)).json()
    assert table(plan)[("pro",)] == [1, 1]
    one_day = {"site_id": SITE, "period": "day", "date": str(NEXT)}
    day = (await client.get(f"{url}/api/stats/main", params=one_day)).json()
    assert day["results"][0]["metrics"][0] == 1


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/api/stats/breakdown/shoes", {}, "shoes"),
        ("/api/stats/main", {"period": "custom"}, "date"),
        ("/api/stats/main", {"period": "day", "date": "yesterday-ish"}, "date"),
        ("/api/stats/main", {"filters": "[oops"}, "filters"),
        ("/api/stats/timeseries", {"interval": "minute"}, "interval"),
        ("/api/stats/breakdown/pages", {"limit": "0"}, "limit"),
        ("/api/stats/breakdown/pages", {"limit": "²"}, "limit"),  # a digit to str.isdigit
        ("/api/stats/breakdown/pages", {"page": "\u0661\u0660"}, "page"),  # Arabic-Indic 10
        ("/api/stats/funnel", {"steps": "page:/,page:/a", "window": "²"}, "window"),
        ("/api/stats/funnel", {"steps": "page:/,page:/a", "compare": "previous_period"}, "compare"),
        ("/api/stats/sessions", {"compare": "year_over_year"}, "compare"),
        (
            "/api/stats/main",
            {"period": "custom", "date": "1970-01-01,2099-12-31", "compare": "previous_period"},
            "comparison",
        ),
        ("/api/stats/retention", {"interval": "month", "timezone": "right/UTC"}, "right/UTC"),
        ("/api/stats/realtime", {"timezone": "Mars/Base"}, "Mars/Base"),
        ("/api/stats/realtime", {"period": "bogus"}, "period does not apply"),  # was a 200
        ("/api/stats/realtime", {"date": "garbage"}, "date does not apply"),
        ("/api/stats/realtime", {"filters": '[["bogus"]]'}, "bogus"),
        ("/api/stats/main", {"site_id": "bad site"}, "site_id"),
        ("/api/stats/main", {"filters": "[" * 5000 + "]" * 5000}, "filters"),
        ("/api/stats/main", {"period": "day", "date": "9999-12-31"}, "date must lie"),
        ("/api/stats/main", {"period": "month", "date": "9999-12-15"}, "date must lie"),
        ("/api/stats/main", {"period": "day", "date": "20260110"}, "YYYY-MM-DD"),
        ("/api/stats/main", {"period": "custom", "date": "20260101,20260110"}, "YYYY-MM-DD"),
        ("/api/stats/main", {"period": "24h", "date": "2026-01-10"}, "date does not"),
        ("/api/stats/main", {"period": "realtime"}, "period must be one of day, 24h"),
        ("/api/stats/main", {"period": "custom", "date": "foo,bar"}, "date must be two dates"),
        ("/api/stats/main", {"period": "custom", "date": "2026-01-05,2026-01-01"}, "date ends"),
        (
            "/api/stats/timeseries",
            {"period": "custom", "date": "1970-01-01,2099-12-31", "interval": "hour"},
            "time:hour",
        ),
    ],
)
async def test_dashboard_endpoint_errors(
    stats_server: RunningServer, path: str, params: dict[str, str], named: str
) -> None:
    params = {"site_id": SITE, **params}
    response = await stats_server.client.get(f"{stats_server.url}{path}", params=params)
    assert response.status_code == 400
    assert named in response.json()["error"]


async def test_a_repeated_parameter_is_400(stats_server: RunningServer) -> None:
    params = [("site_id", SITE), ("period", "day"), ("period", "7d")]
    response = await stats_server.client.get(f"{stats_server.url}/api/stats/main", params=params)
    assert response.status_code == 400
    assert response.json()["error"] == "parameter period is given more than once"


async def get(server: RunningServer, path: str, **params: str) -> Any:
    params = {"site_id": SITE, "period": "day", "date": str(D), **params}
    response = await server.client.get(f"{server.url}{path}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_funnel(stats_server: RunningServer) -> None:
    steps = "page:/,page:/pricing,event:signup"
    answer = await get(stats_server, "/api/stats/funnel", steps=steps, window="3600")
    # Visitor 1 goes all the way; visitors 2 and 3 only see "/"; visitor 4 never does.
    assert [s["visitors"] for s in answer["steps"]] == [3, 1, 1]
    assert [s["dropoff"] for s in answer["steps"]] == [0, 2, 0]
    assert [s["conversion_rate"] for s in answer["steps"]] == [100.0, 33.33, 33.33]
    # /pricing came 5 minutes after "/": outside a 2-minute window.
    short = await get(stats_server, "/api/stats/funnel", steps=steps, window="120")
    assert [s["visitors"] for s in short["steps"]] == [3, 0, 0]
    reversed_order = await get(stats_server, "/api/stats/funnel", steps="page:/pricing,page:/")
    assert [s["visitors"] for s in reversed_order["steps"]] == [2, 0]
    # one pageview is not the same step twice: nobody viewed /pricing again
    twice = await get(stats_server, "/api/stats/funnel", steps="page:/pricing,page:/pricing")
    assert [s["visitors"] for s in twice["steps"]] == [2, 0]


async def test_retention(stats_server: RunningServer) -> None:
    answer = await get(
        stats_server, "/api/stats/retention", period="custom", date=f"{D},{NEXT}", interval="day"
    )
    [cohort] = answer["cohorts"]
    assert (cohort["cohort"], cohort["visitors"]) == ("2026-01-10", 4)
    assert cohort["periods"] == [
        {"offset": 0, "visitors": 4, "percentage": 100.0},
        {"offset": 1, "visitors": 1, "percentage": 25.0},  # visitor 3 after midnight
    ]
    for interval in ("day", "week"):  # all time starts on the first day with data
        all_time = await get(
            stats_server, "/api/stats/retention", period="all", date=str(NEXT), interval=interval
        )
        custom = await get(
            stats_server, "/api/stats/retention", period="custom", date=f"{D},{NEXT}",
            interval=interval,
        )  # fmt: skip
        assert all_time == custom


async def test_ranges_of_centuries_bucket_by_the_zone_as_short_ones(
    stats_server: RunningServer,
) -> None:
    """A range of centuries has every DST transition of the zone's history (a binary
    search in SQL): the same days and weeks as a month's range."""
    zone = {"timezone": "America/New_York"}
    for interval, first in (("day", "2026-01-10"), ("week", "2026-01-05")):
        centuries, month = [
            await get(stats_server, "/api/stats/retention", period="custom", date=dates,
                      interval=interval, **zone)
            for dates in ("1970-01-01,2099-12-31", "2026-01-01,2026-01-31")
        ]  # fmt: skip
        assert centuries == month
        assert centuries["cohorts"][0]["cohort"] == first
    weeks = [
        await query(
            stats_server, metrics=["visitors"], dimensions=["time:week"], date_range=dates, **zone
        )
        for dates in (["1990-01-01", "2049-12-31"], ["2026-01-01", "2026-01-31"])
    ]
    busy = [{week: row for week, row in table(answer).items() if row != [0]} for answer in weeks]
    assert busy == [{("2026-01-05",): [4]}] * 2


async def test_funnel_and_retention_with_a_visit_filter(stats_server: RunningServer) -> None:
    french = json.dumps([["is", "visit:country", ["FR"]]])  # visitor 2, one page: "/"
    funnel = await get(
        stats_server, "/api/stats/funnel", steps="page:/,page:/pricing", filters=french
    )
    assert [s["visitors"] for s in funnel["steps"]] == [1, 0]
    retention = await get(
        stats_server,
        "/api/stats/retention",
        period="custom",
        date=f"{D},{NEXT}",
        interval="day",
        filters=french,
    )
    assert [(c["cohort"], c["visitors"]) for c in retention["cohorts"]] == [("2026-01-10", 1)]


async def test_flow(stats_server: RunningServer) -> None:
    answer = await get(stats_server, "/api/stats/flow", page="/pricing")
    assert answer["previous"] == [{"page": "(entrance)", "views": 1}, {"page": "/", "views": 1}]
    assert answer["next"] == [{"page": "(exit)", "views": 2}]


async def test_sessions(stats_server: RunningServer) -> None:
    answer = await get(stats_server, "/api/stats/sessions")
    assert (answer["visits"], answer["visit_duration"], answer["bounce_rate"]) == (5, 84, 60)
    assert answer["pages_per_visit"] == [{"pages": "1", "visits": 4}, {"pages": "2", "visits": 1}]
    assert answer["visit_duration"] == 84
    assert {b["duration"]: b["visits"] for b in answer["visit_duration_buckets"]} == {
        "0s-10s": 3, "1m-3m": 1, "3m-10m": 1,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/api/stats/funnel", {"steps": "page:/"}, "steps"),
        ("/api/stats/funnel", {"steps": "click:/,page:/x"}, "click"),
        ("/api/stats/retention", {"interval": "fortnight"}, "interval"),
        ("/api/stats/flow", {}, "page"),
        ("/api/stats/flow", {"page": "pricing"}, "page"),
    ],
)
async def test_behaviour_endpoint_errors(
    stats_server: RunningServer, path: str, params: dict[str, str], named: str
) -> None:
    response = await stats_server.client.get(
        f"{stats_server.url}{path}", params={"site_id": SITE, **params}
    )
    assert response.status_code == 400
    assert named in response.json()["error"]


async def export(server: RunningServer, **params: str) -> bytes:
    params = {"site_id": SITE, "period": "custom", "date": f"{D},{NEXT}", **params}
    response = await server.client.get(f"{server.url}/api/stats/export", params=params)
    assert response.status_code == 200, response.text
    assert "attachment" in response.headers["content-disposition"]
    return response.content


async def test_export_events_in_every_format(stats_server: RunningServer) -> None:
    import csv
    import io
    import json

    import pyarrow.parquet as pq

    rows = list(csv.DictReader(io.StringIO((await export(stats_server)).decode())))
    assert [row["pathname"] for row in rows] == [
        e.pathname for e in sorted(EVENTS, key=lambda e: e.timestamp)
    ]
    assert rows[-1]["pathname"] == "/docs"
    lines = (await export(stats_server, format="json")).decode().splitlines()
    assert [json.loads(line)["event_name"] for line in lines].count("purchase") == 1
    table = pq.read_table(io.BytesIO(await export(stats_server, format="parquet")))
    assert table.num_rows == len(EVENTS)
    assert [(f.name, f.type) for f in table.schema] == [(f.name, f.type) for f in EVENT_SCHEMA]
    assert str(table.schema.field("revenue_amount").type) == "decimal128(12, 2)"
    filtered = await export(stats_server, filters='[["is","visit:country",["FR"]]]')
    assert len(list(csv.DictReader(io.StringIO(filtered.decode())))) == 1


async def test_export_aggregates_and_empty_ranges(stats_server: RunningServer) -> None:
    import io

    import pyarrow.parquet as pq

    sources = (await export(stats_server, dimension="visit:source")).decode().splitlines()
    assert sources[0] == "visit:source,visitors,pageviews"
    assert "Google,1,2" in sources
    empty = await export(stats_server, format="parquet", period="day", date="2020-01-01")
    assert pq.read_table(io.BytesIO(empty)).num_rows == 0
    schema = pq.read_schema(
        io.BytesIO(
            await export(
                stats_server,
                format="parquet",
                period="day",
                date="2020-01-01",
                dimension="event:page",
                metrics="visitors,bounce_rate",
            )
        )
    )
    assert [(field.name, str(field.type)) for field in schema] == [
        ("event:page", "string"),
        ("visitors", "int64"),
        ("bounce_rate", "double"),
    ]  # as typed as when there are rows
    empty_csv = (await export(stats_server, period="day", date="2020-01-01")).decode()
    assert empty_csv.splitlines()[0].startswith("site_id,visitor_id,timestamp")


async def test_an_aggregate_export_has_every_row(start_server: Any, tmp_path: Any) -> None:
    """More rows than a Stats API page (10,000): the export asks page after page."""
    layout = DataLayout(tmp_path / "pages")
    layout.create()
    pages = [event(i, at(D, 12, 0), f"/p{i:05d}") for i in range(10_050)]
    write_batch(events_to_table(pages), layout, "pages")
    server = await start_server(data_dir=layout.root, compaction_interval=0)
    params = {"dimension": "event:page", "metrics": "visitors"}
    lines = (await export(server, **params)).decode().splitlines()
    assert len(lines) == 1 + 10_050
    assert sorted(lines[1:]) == [f"/p{i:05d},1" for i in range(10_050)]
    table = pq.read_table(io.BytesIO(await export(server, **params, format="parquet")))
    assert table.num_rows == 10_050


async def test_export_csv_defuses_formulas(server: RunningServer) -> None:
    body = {**SEED_EVENT, "n": '=HYPERLINK("http://evil")', "p": {"x": "+1"}}
    assert (await server.post_event(body)).status_code == 202
    response = await server.client.get(
        f"{server.url}/api/stats/export", params={"site_id": "example.com", "period": "day"}
    )
    text = response.text
    assert "'=HYPERLINK" in text
    assert "\n=" not in text and ",=" not in text


async def test_export_rejects_unknown_format(stats_server: RunningServer) -> None:
    response = await stats_server.client.get(
        f"{stats_server.url}/api/stats/export", params={"site_id": SITE, "format": "xlsx"}
    )
    assert response.status_code == 400
    assert "format" in response.json()["error"]


async def test_all_time_starts_at_the_first_event(stats_server: RunningServer) -> None:
    answer = await query(
        stats_server, metrics=["pageviews"], dimensions=["time:day"], date_range="all"
    )
    labels = [row["dimensions"][0] for row in answer["results"]]
    assert labels[0] == "2026-01-10"  # not 2000-01-01
    assert sum(row["metrics"][0] for row in answer["results"]) == 7


async def test_an_unreadable_data_file_is_named_in_a_500_without_a_traceback(
    stats_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    layout = DataLayout(stats_server.data_dir)
    broken = layout.partition(SITE, (D - dt.date(1970, 1, 1)).days) / "broken.parquet"
    broken.write_bytes(b"not parquet")
    name = f"events/site_id={SITE}/date={D}/broken.parquet"
    params = {"site_id": SITE, "period": "day", "date": D.isoformat()}
    for route in ("main", "export"):
        response = await stats_server.client.get(
            f"{stats_server.url}/api/stats/{route}", params=params
        )
        assert response.status_code == 500
        error = response.json()["error"]
        assert error.startswith(f"the data file {name} cannot be read (") and "move it" in error
        assert str(stats_server.data_dir) not in error
    assert "Traceback" not in caplog.text and f"cannot read {broken}" in caplog.text
    broken.unlink()
    main = f"{stats_server.url}/api/stats/main"
    assert (await stats_server.client.get(main, params=params)).status_code == 200
