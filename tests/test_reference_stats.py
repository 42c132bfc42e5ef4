"""Hand-computed cases that pin down the plain-Python reference in ``reference_stats``.

Every expected number is worked out by hand in a comment next to it, so the
reference can be trusted when the query engine is compared against it.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from mallard.storage.schema import Event
from tests.factories import make_event
from tests.reference_stats import (
    aggregate,
    breakdown,
    funnel,
    retention,
    round_half_up,
    sessions,
    timeseries,
)

SECOND = 1_000_000
MINUTE = 60 * SECOND
VISIT_METRICS = ["visits", "views_per_visit", "bounce_rate", "visit_duration"]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Microseconds since the epoch of a UTC wall-clock time."""
    moment = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


T0 = utc(2024, 1, 10, 12)


def ev(visitor: int, at: int, path: str = "/", name: str = "pageview", **fields: Any) -> Event:
    return make_event(visitor_id=visitor, timestamp=at, pathname=path, event_name=name, **fields)


# --- sessions ---


def test_a_gap_of_exactly_30_minutes_continues_the_visit_and_one_more_second_splits() -> None:
    events = [
        ev(1, T0, "/a"),
        ev(1, T0 + 1800 * SECOND, "/b"),  # gap 1800 s: same visit
        ev(1, T0 + 1800 * SECOND + 1801 * SECOND, "/c"),  # gap 1801 s: new visit
    ]
    first, second = sessions(events)
    assert (first.events, first.pageviews, first.duration_s) == (2, 2, 1800.0)
    assert (first.entry_page, first.exit_page) == ("/a", "/b")
    assert second.start_us == T0 + 3601 * SECOND
    assert (second.events, second.duration_s, second.entry_page) == (1, 0.0, "/c")


def test_the_gap_is_measured_from_the_previous_event_not_the_visit_start() -> None:
    # 7 events 20 minutes apart: every gap is 1200 s, so one visit of 6 * 1200 = 7200 s.
    events = [ev(1, T0 + i * 20 * MINUTE) for i in range(7)]
    (visit,) = sessions(events)
    assert (visit.events, visit.duration_s) == (7, 7200.0)


def test_visits_are_per_visitor_and_input_order_does_not_matter() -> None:
    # Visitor 1 at 0 and 40 min (two visits), visitor 2 at 10 and 35 min (one visit),
    # given in shuffled order.
    events = [ev(1, T0 + 40 * MINUTE), ev(2, T0 + 35 * MINUTE), ev(1, T0), ev(2, T0 + 10 * MINUTE)]
    result = [(s.visitor_id, s.start_us, s.events) for s in sessions(events)]
    # Ordered by start time: 1@0, 2@10min, 1@40min.
    assert result == [(1, T0, 1), (2, T0 + 10 * MINUTE, 2), (1, T0 + 40 * MINUTE, 1)]


def test_equal_timestamps_keep_their_input_order() -> None:
    # Both pageviews at T0: /first is given first, so it is the entry and /second the exit.
    (visit,) = sessions([ev(1, T0, "/first"), ev(1, T0, "/second")])
    assert (visit.entry_page, visit.exit_page) == ("/first", "/second")


def test_bounce_needs_exactly_one_event_which_is_a_pageview() -> None:
    events = [
        ev(1, T0, "/a"),  # one pageview: bounce
        ev(2, T0, "/a"),
        ev(2, T0 + SECOND, "/a", "Signup"),  # pageview + custom event: not a bounce
        ev(3, T0, "/a"),
        ev(3, T0 + SECOND, "/b"),  # two pageviews: not a bounce
        ev(4, T0, "/a", "Download"),  # one custom event, no pageview: not a bounce
    ]
    bounces = {s.visitor_id: s.is_bounce for s in sessions(events)}
    assert bounces == {1: True, 2: False, 3: False, 4: False}
    # 1 bounce of 4 visits = 25 %.
    assert aggregate(events, ["visits", "bounce_rate"]) == {"visits": 4, "bounce_rate": 25}


def test_entry_and_exit_are_the_first_and_last_pageview_custom_events_ignored() -> None:
    events = [
        ev(1, T0, "/landing", "Outbound Link: Click"),  # custom event first: not the entry
        ev(1, T0 + 1 * MINUTE, "/a"),
        ev(1, T0 + 2 * MINUTE, "/b"),
        ev(1, T0 + 3 * MINUTE, "/c"),
        ev(1, T0 + 4 * MINUTE, "/z", "Signup"),  # custom event last: not the exit
    ]
    (visit,) = sessions(events)
    assert (visit.entry_page, visit.exit_page) == ("/a", "/c")
    assert (visit.events, visit.pageviews, visit.duration_s) == (5, 3, 240.0)
    (only_custom,) = sessions([ev(2, T0, "/x", "Signup")])
    assert (only_custom.entry_page, only_custom.exit_page) == (None, None)


def test_visit_attributes_come_from_the_first_event() -> None:
    events = [
        ev(1, T0, referrer_source="Google", country_code="DE", browser="Firefox"),
        ev(1, T0 + MINUTE, referrer_source="Bing", country_code="FR", browser="Chrome"),
    ]
    (visit,) = sessions(events)
    assert (visit.referrer_source, visit.country_code, visit.browser) == ("Google", "DE", "Firefox")


# --- aggregate ---


def test_aggregate_totals() -> None:
    events = [
        ev(1, T0, "/a"),
        ev(1, T0 + 60 * SECOND, "/b"),  # visit 1: 2 pageviews, 60 s
        ev(1, T0 + 2 * 3600 * SECOND, "/a"),  # visit 2 (2 h later): bounce, 0 s
        ev(2, T0, "/a"),
        ev(2, T0 + 30 * SECOND, "/a", "Signup"),  # visit 3: 1 pageview + 1 event, 30 s
    ]
    result = aggregate(
        events,
        ["visitors", "visits", "pageviews", "events", *VISIT_METRICS[1:]],
    )
    assert result == {
        "visitors": 2,
        "visits": 3,
        "pageviews": 4,  # 2 + 1 + 1
        "events": 5,
        "views_per_visit": 1.33,  # 4 / 3 = 1.333...
        "bounce_rate": 33,  # 1 / 3 = 33.3 %
        "visit_duration": 30,  # (60 + 0 + 30) / 3
    }


def test_rounding_is_half_up_not_bankers() -> None:
    # 7 one-pageview visits (bounces) and 1 visit of 2 pageviews 5 s apart (8 visitors).
    events = [ev(v, T0) for v in range(7)] + [ev(7, T0), ev(7, T0 + 5 * SECOND)]
    result = aggregate(events, ["views_per_visit", "bounce_rate", "visit_duration"])
    # 9 / 8 = 1.125 -> 1.13; 7 / 8 = 87.5 % -> 88; mean duration 5 / 8 = 0.625 s -> 1.
    assert result == {"views_per_visit": 1.13, "bounce_rate": 88, "visit_duration": 1}
    # A plain half: 2.5 s mean duration -> 3 (Python's round would say 2).
    two = [ev(1, T0), ev(1, T0 + 5 * SECOND), ev(2, T0)]
    assert aggregate(two, ["visit_duration"]) == {"visit_duration": 3}
    assert round_half_up(Fraction(25, 8), 2) == Decimal("3.13")  # 3.125


def test_no_events_give_zeros() -> None:
    assert aggregate([], ["visitors", "visits", "views_per_visit", "bounce_rate"]) == {
        "visitors": 0,
        "visits": 0,
        "views_per_visit": 0.0,
        "bounce_rate": 0,
    }
    assert aggregate([], ["total_revenue", "average_revenue"]) == {
        "total_revenue": Decimal("0.00"),
        "average_revenue": Decimal("0.00"),
    }


def test_revenue_sums_and_averages_over_events_with_revenue() -> None:
    events = [
        ev(1, T0, "/", "Purchase", revenue_amount=Decimal("10.00")),
        ev(2, T0, "/", "Purchase", revenue_amount=Decimal("5.01")),
        ev(3, T0, "/"),  # no revenue: not part of the average
    ]
    result = aggregate(events, ["total_revenue", "average_revenue"])
    # 10.00 + 5.01 = 15.01; 15.01 / 2 = 7.505 -> 7.51 (half up).
    assert result == {"total_revenue": Decimal("15.01"), "average_revenue": Decimal("7.51")}


def test_time_range_is_half_open_and_cuts_visits_at_its_start() -> None:
    start, end = utc(2024, 1, 2), utc(2024, 1, 3)
    events = [
        ev(1, start - 10 * MINUTE, "/before"),  # outside; would have been the entry
        ev(1, start + 5 * MINUTE, "/inside"),
        ev(2, end, "/at-end"),  # end is exclusive
        ev(3, start, "/at-start"),  # start is inclusive
    ]
    result = aggregate(events, ["visitors", "visits", "pageviews"], start_us=start, end_us=end)
    assert result == {"visitors": 2, "visits": 2, "pageviews": 2}  # visitors 1 and 3
    # Visitor 1's visit is built from in-range events only, so it enters on /inside.
    entries = breakdown(events, "visit:entry_page", ["visits"], start_us=start, end_us=end)
    assert entries == [("/at-start", {"visits": 1}), ("/inside", {"visits": 1})]


# --- filters ---


def filter_events() -> list[Event]:
    """Three visitors, one visit each."""
    return [
        # visitor 1: DE (first event), from Google; /a then /b, 60 s
        ev(1, T0, "/a", referrer_source="Google", country_code="DE"),
        ev(1, T0 + 60 * SECOND, "/b", country_code=None, props='{"plan": "pro"}'),
        # visitor 2: FR, no source; /b only (bounce)
        ev(2, T0, "/b", country_code="FR"),
        # visitor 3: DE, from Bing; /c, then a Signup custom event 30 s later
        ev(3, T0, "/c", referrer_source="Bing", country_code="DE"),
        ev(3, T0 + 30 * SECOND, "/c", "Signup"),
    ]


def test_an_event_filter_counts_matching_events_but_keeps_whole_visits() -> None:
    result = aggregate(
        filter_events(),
        ["visitors", "pageviews", "events", *VISIT_METRICS],
        filters=[["is", "event:page", ["/a"]]],
    )
    # Only visitor 1's /a pageview matches; the visit containing it counts whole:
    # 2 pageviews in 1 visit, not a bounce, 60 s long.
    assert result == {
        "visitors": 1,
        "pageviews": 1,
        "events": 1,
        "visits": 1,
        "views_per_visit": 2.0,
        "bounce_rate": 0,
        "visit_duration": 60,
    }


def test_an_event_filter_matching_several_visits() -> None:
    result = aggregate(
        filter_events(),
        ["visitors", "pageviews", *VISIT_METRICS],
        filters=[["is", "event:page", ["/b"]]],
    )
    # /b pageviews: visitor 1 (2-page visit, 60 s) and visitor 2 (bounce, 0 s).
    # views per visit (2 + 1) / 2 = 1.5; bounce 1 / 2 = 50 %; duration (60 + 0) / 2 = 30.
    assert result == {
        "visitors": 2,
        "pageviews": 2,
        "visits": 2,
        "views_per_visit": 1.5,
        "bounce_rate": 50,
        "visit_duration": 30,
    }


def test_a_visit_filter_keeps_whole_visits_with_all_their_events() -> None:
    result = aggregate(
        filter_events(),
        ["visitors", "pageviews", "events", "visits"],
        filters=[["is", "visit:country", ["DE"]]],
    )
    # Visits of visitors 1 and 3 (country of their first event). Visitor 1's second
    # event has no country but belongs to a DE visit, so it counts: 2 + 1 pageviews,
    # 2 + 2 events.
    assert result == {"visitors": 2, "pageviews": 3, "events": 4, "visits": 2}


def test_is_not_keeps_missing_values_and_contains_is_a_substring_test() -> None:
    events = filter_events()
    # Source is not Google: visitor 2 (no source) and visitor 3 (Bing).
    not_google = aggregate(events, ["visitors"], filters=[["is_not", "visit:source", ["Google"]]])
    assert not_google == {"visitors": 2}
    # A missing value is matched by the "(none)" label: visitor 2 only.
    direct = aggregate(events, ["visitors"], filters=[["is", "visit:source", ["(none)"]]])
    assert direct == {"visitors": 1}
    # "oo" is in "Google" only.
    contains = aggregate(events, ["visitors"], filters=[["contains", "visit:source", ["oo"]]])
    assert contains == {"visitors": 1}
    # Case-insensitive: "bing" matches "Bing" only with the modifier.
    lower = [["is", "visit:source", ["bing"]]]
    assert aggregate(events, ["visitors"], filters=lower) == {"visitors": 0}
    lower[0].append({"case_sensitive": False})
    assert aggregate(events, ["visitors"], filters=lower) == {"visitors": 1}


def test_filters_combine_with_and_across_event_and_visit_dimensions() -> None:
    filters = [["is", "visit:country", ["DE"]], ["is", "event:page", ["/b", "/c"]]]
    result = aggregate(
        filter_events(), ["visitors", "pageviews", "events", "visits"], filters=filters
    )
    # DE visits (1 and 3), events on /b or /c: visitor 1's /b pageview, visitor 3's /c
    # pageview and /c Signup event. Visitor 2's /b is in an FR visit.
    assert result == {"visitors": 2, "pageviews": 2, "events": 3, "visits": 2}


def test_entry_page_and_props_filters() -> None:
    events = filter_events()
    # Entry page /b: visitor 2 only (visitor 1 entered on /a).
    entry = aggregate(events, ["visits"], filters=[["is", "visit:entry_page", ["/b"]]])
    assert entry == {"visits": 1}
    # Exit page /b: visitors 1 and 2.
    exits = aggregate(events, ["visits"], filters=[["is", "visit:exit_page", ["/b"]]])
    assert exits == {"visits": 2}
    # props.plan == "pro": one event of visitor 1.
    plan = aggregate(
        events, ["visitors", "events", "visits"], filters=[["is", "event:props:plan", ["pro"]]]
    )
    assert plan == {"visitors": 1, "events": 1, "visits": 1}


def test_conversion_rate_divides_by_visitors_without_the_goal_filter() -> None:
    events = filter_events()
    goal = [["is", "event:name", ["Signup"]]]
    # 1 of 3 visitors signed up: 33.33 %.
    assert aggregate(events, ["visitors", "conversion_rate"], filters=goal) == {
        "visitors": 1,
        "conversion_rate": 33.33,
    }
    # Among DE visits (visitors 1 and 3), 1 of 2 signed up: 50 %.
    german = [*goal, ["is", "visit:country", ["DE"]]]
    assert aggregate(events, ["conversion_rate"], filters=german) == {"conversion_rate": 50.0}
    with pytest.raises(ValueError):
        aggregate(events, ["conversion_rate"])


# --- breakdown ---


def test_page_breakdown_counts_pageviews_only_and_sorts_ties_by_value() -> None:
    events = [
        *filter_events(),
        ev(4, T0, "/x", "Outbound Link: Click"),  # custom event on /x: no /x row
    ]
    result = breakdown(events, "event:page", ["visitors", "pageviews", "visits"])
    # /b: visitors 1 and 2; /a and /c: one visitor each (tie: /a before /c);
    # /c counts visitor 3's pageview only, not the Signup event sent from /c.
    assert result == [
        ("/b", {"visitors": 2, "pageviews": 2, "visits": 2}),
        ("/a", {"visitors": 1, "pageviews": 1, "visits": 1}),
        ("/c", {"visitors": 1, "pageviews": 1, "visits": 1}),
    ]


def test_visit_breakdowns_label_missing_values_none() -> None:
    events = filter_events()
    sources = breakdown(events, "visit:source", ["visitors", "pageviews"])
    # Every source has 1 visitor; tie broken by value: "(none)" < "Bing" < "Google".
    assert sources == [
        ("(none)", {"visitors": 1, "pageviews": 1}),
        ("Bing", {"visitors": 1, "pageviews": 1}),
        ("Google", {"visitors": 1, "pageviews": 2}),
    ]
    countries = breakdown(events, "visit:country", ["visits", "events"])
    # DE: visits of 1 and 3 with 2 + 2 events; FR: visitor 2's single event.
    assert countries == [("DE", {"visits": 2, "events": 4}), ("FR", {"visits": 1, "events": 1})]
    entries = breakdown(events, "visit:entry_page", ["pageviews", "bounce_rate"])
    # Entered on /a: 2 pageviews; /b: 1 (a bounce); /c: 1 pageview (no bounce).
    assert entries == [
        ("/a", {"pageviews": 2, "bounce_rate": 0}),
        ("/b", {"pageviews": 1, "bounce_rate": 100}),
        ("/c", {"pageviews": 1, "bounce_rate": 0}),
    ]


def test_event_name_breakdown_and_its_conversion_rate() -> None:
    result = breakdown(filter_events(), "event:name", ["events", "visitors", "conversion_rate"])
    # 4 pageviews by 3 visitors; 1 Signup by 1 of the 3 visitors (33.33 %).
    assert result == [
        ("pageview", {"events": 4, "visitors": 3, "conversion_rate": 100.0}),
        ("Signup", {"events": 1, "visitors": 1, "conversion_rate": 33.33}),
    ]


# --- timeseries ---


def test_activity_across_utc_midnight_is_one_visitor_with_a_visit_each_day() -> None:
    events = [ev(1, utc(2024, 1, 1, 23, 50), "/a"), ev(1, utc(2024, 1, 2, 0, 10), "/b")]
    result = timeseries(
        events,
        "day",
        "UTC",
        dt.date(2024, 1, 1),
        dt.date(2024, 1, 3),
        ["visitors", "pageviews", "visits"],
    )
    # 20 minutes apart, but on two UTC days: a visit on each day.
    assert result == [
        ("2024-01-01", {"visitors": 1, "pageviews": 1, "visits": 1}),
        ("2024-01-02", {"visitors": 1, "pageviews": 1, "visits": 1}),
        ("2024-01-03", {"visitors": 0, "pageviews": 0, "visits": 0}),  # empty day listed
    ]
    whole = aggregate(
        events, ["visitors", "visits"], start_us=utc(2024, 1, 1), end_us=utc(2024, 1, 3)
    )
    assert whole == {"visitors": 1, "visits": 2}


def test_an_event_at_23_30_utc_on_jan_1_is_jan_2_in_berlin() -> None:
    events = [ev(1, utc(2024, 1, 1, 23, 30))]  # 00:30 on Jan 2 in Berlin (UTC+1)
    days = (dt.date(2024, 1, 1), dt.date(2024, 1, 2))
    berlin = timeseries(events, "day", "Europe/Berlin", *days, ["pageviews"])
    assert berlin == [("2024-01-01", {"pageviews": 0}), ("2024-01-02", {"pageviews": 1})]
    in_utc = timeseries(events, "day", "UTC", *days, ["pageviews"])
    assert in_utc == [("2024-01-01", {"pageviews": 1}), ("2024-01-02", {"pageviews": 0})]
    hours = timeseries(
        events, "hour", "Europe/Berlin", dt.date(2024, 1, 2), dt.date(2024, 1, 2), ["visits"]
    )
    assert len(hours) == 24
    assert hours[0] == ("2024-01-02 00:00:00", {"visits": 1})
    assert all(metrics == {"visits": 0} for _, metrics in hours[1:])


def test_hourly_buckets_follow_the_wall_clock_across_dst_changes() -> None:
    # 2024-03-31, Berlin: 02:00 CET jumps to 03:00 CEST at 01:00 UTC.
    spring = [ev(1, utc(2024, 3, 31, 0, 30)), ev(2, utc(2024, 3, 31, 1, 30))]
    day = dt.date(2024, 3, 31)
    hours = dict(timeseries(spring, "hour", "Europe/Berlin", day, day, ["pageviews"]))
    assert len(hours) == 24  # the skipped 02:00 hour is still listed
    assert hours["2024-03-31 01:00:00"] == {"pageviews": 1}  # 00:30 UTC = 01:30 CET
    assert hours["2024-03-31 02:00:00"] == {"pageviews": 0}  # never happens
    assert hours["2024-03-31 03:00:00"] == {"pageviews": 1}  # 01:30 UTC = 03:30 CEST
    # 2024-10-27, Berlin: 03:00 CEST falls back to 02:00 CET at 01:00 UTC.
    autumn = [ev(1, utc(2024, 10, 27, 0, 30)), ev(2, utc(2024, 10, 27, 1, 30))]
    day = dt.date(2024, 10, 27)
    hours = dict(timeseries(autumn, "hour", "Europe/Berlin", day, day, ["pageviews"]))
    assert len(hours) == 24
    # 00:30 UTC = 02:30 CEST and 01:30 UTC = 02:30 CET share the 02:00 bucket.
    assert hours["2024-10-27 02:00:00"] == {"pageviews": 2}


# --- funnel ---


def test_funnel_respects_step_order_and_the_window_from_the_first_step() -> None:
    steps = [("page", "/a"), ("page", "/b"), ("event", "Signup")]
    events = [
        # visitor 1: all three steps in order within 2 minutes
        ev(1, T0, "/a"),
        ev(1, T0 + 60 * SECOND, "/b"),
        ev(1, T0 + 120 * SECOND, "/b", "Signup"),
        # visitor 2: /b comes before /a, so step 2 is never reached after step 1
        ev(2, T0, "/b"),
        ev(2, T0 + 60 * SECOND, "/a"),
        ev(2, T0 + 100 * SECOND, "/a", "Signup"),
        # visitor 3: /b exactly at the 600 s window edge (counts), Signup 1 s later (does not)
        ev(3, T0, "/a"),
        ev(3, T0 + 600 * SECOND, "/b"),
        ev(3, T0 + 601 * SECOND, "/b", "Signup"),
        # visitor 4: only the goal, never step 1
        ev(4, T0, "/", "Signup"),
        # visitor 5: a second /a does not restart the window; /b at 1010 s is too late
        ev(5, T0, "/a"),
        ev(5, T0 + 1000 * SECOND, "/a"),
        ev(5, T0 + 1010 * SECOND, "/b"),
    ]
    result = funnel(events, steps, window_s=600)
    # Step 1: visitors 1, 2, 3, 5 = 4; step 2: 1 and 3 = 2; step 3: 1 only.
    assert result == [
        {"step": 1, "name": "page:/a", "visitors": 4, "dropoff": 0, "conversion_rate": 100.0},
        {"step": 2, "name": "page:/b", "visitors": 2, "dropoff": 2, "conversion_rate": 50.0},
        {"step": 3, "name": "event:Signup", "visitors": 1, "dropoff": 1, "conversion_rate": 25.0},
    ]


def test_one_event_never_reaches_two_consecutive_steps() -> None:
    events = [
        ev(1, T0, "/a"),  # once
        ev(2, T0, "/a"),  # twice
        ev(2, T0 + SECOND, "/a"),
        ev(3, T0, "/a", "Signup"),  # a Signup on /a, then a later one
        ev(3, T0 + SECOND, "/b", "Signup"),
    ]
    twice = funnel(events, [("page", "/a"), ("page", "/a")], window_s=60)
    assert [step["visitors"] for step in twice] == [2, 1]
    signup = funnel(events, [("event", "Signup"), ("event", "Signup")], window_s=60)
    assert [step["visitors"] for step in signup] == [1, 1]
    # steps that overlap: the pageview that reached step 1 does not reach step 2 too
    overlapping = funnel(events, [("page", "/a"), ("event", "pageview")], window_s=60)
    assert [step["visitors"] for step in overlapping] == [2, 1]


def test_funnel_conversion_rates_round_to_two_decimals() -> None:
    # 3 visitors view /a, 1 of them then /b: 1 / 3 = 33.33 %.
    events = [ev(v, T0, "/a") for v in range(3)] + [ev(0, T0 + SECOND, "/b")]
    second = funnel(events, [("page", "/a"), ("page", "/b")], window_s=60)[1]
    assert (second["visitors"], second["dropoff"], second["conversion_rate"]) == (1, 2, 33.33)


# --- retention ---


def test_weekly_retention_cohorts_and_percentages() -> None:
    week1, week2, week3 = utc(2024, 1, 1, 12), utc(2024, 1, 8, 12), utc(2024, 1, 15, 12)
    events = [  # 2024-01-01 is a Monday
        ev(1, week1),
        ev(1, week2),  # A: weeks 1 and 2
        ev(2, week1),
        ev(2, week3),  # B: weeks 1 and 3
        ev(3, week1),
        ev(3, week1 + 2 * 86_400 * SECOND),  # C: twice in week 1 only
        ev(4, week2),  # D: week 2 only
    ]
    assert retention(events, "week") == [
        {
            "cohort": "2024-01-01",
            "visitors": 3,  # A, B, C
            "periods": [
                {"offset": 0, "visitors": 3, "percentage": 100.0},
                {"offset": 1, "visitors": 1, "percentage": 33.33},  # A: 1 / 3
                {"offset": 2, "visitors": 1, "percentage": 33.33},  # B: 1 / 3
            ],
        },
        {
            "cohort": "2024-01-08",
            "visitors": 1,  # D
            "periods": [
                {"offset": 0, "visitors": 1, "percentage": 100.0},
                {"offset": 1, "visitors": 0, "percentage": 0.0},  # last data week, D absent
            ],
        },
    ]


def test_retention_periods_are_local_to_the_time_zone() -> None:
    # Sunday 2024-01-07 23:30 UTC is Monday 00:30 in Berlin: a week later there.
    events = [ev(1, utc(2024, 1, 7, 23, 30)), ev(2, utc(2024, 1, 8, 12))]
    assert [c["cohort"] for c in retention(events, "week", "UTC")] == ["2024-01-01", "2024-01-08"]
    berlin = retention(events, "week", "Europe/Berlin")
    assert [(c["cohort"], c["visitors"]) for c in berlin] == [("2024-01-08", 2)]
    # Monthly: 2 visitors in January, 1 of them back in February (50 %), 0 in March.
    monthly = [
        ev(1, utc(2024, 1, 5)),
        ev(2, utc(2024, 1, 20)),
        ev(1, utc(2024, 2, 1)),
        ev(3, utc(2024, 3, 3)),
    ]
    january = retention(monthly, "month")[0]
    assert january["visitors"] == 2
    assert [p["percentage"] for p in january["periods"]] == [100.0, 50.0, 0.0]
