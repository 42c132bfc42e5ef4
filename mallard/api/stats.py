"""Stats routes: Plausible's ``POST /api/v2/query`` and the dashboard's GET endpoints.

Every route builds a :class:`~mallard.query.model.Query` and hands it to the
one query path (:func:`mallard.query.stats.run_query`); the handlers here only
translate parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import pyarrow as pa
from quart import Blueprint, Response, current_app, jsonify, request

from mallard.auth import access
from mallard.ingest import dropped
from mallard.query import behaviour, export, funnels
from mallard.query.engine import QueryEngine, QueryTimeout, QueryTooLarge, UnreadableFile
from mallard.query.model import (
    DATE_PRESETS,
    MAX_LIMIT,
    Query,
    QueryError,
    explicit_range,
    load_json,
    parse_query,
)
from mallard.query.sql import Derived
from mallard.query.stats import from_first_event, run_query

blueprint = Blueprint("stats", __name__)
log = logging.getLogger("mallard.query")

BREAKDOWNS = {
    "pages": ("event:page", ("visitors", "pageviews")),
    "entry_pages": ("visit:entry_page", ("visitors", "visits", "bounce_rate", "visit_duration")),
    "exit_pages": ("visit:exit_page", ("visitors", "visits")),
    "sources": ("visit:source", ("visitors", "visits", "bounce_rate", "visit_duration")),
    "referrers": ("visit:referrer", ("visitors", "visits", "bounce_rate", "visit_duration")),
    "utm_sources": ("visit:utm_source", ("visitors", "visits", "bounce_rate")),
    "utm_mediums": ("visit:utm_medium", ("visitors", "visits", "bounce_rate")),
    "utm_campaigns": ("visit:utm_campaign", ("visitors", "visits", "bounce_rate")),
    "utm_contents": ("visit:utm_content", ("visitors", "visits", "bounce_rate")),
    "utm_terms": ("visit:utm_term", ("visitors", "visits", "bounce_rate")),
    "devices": ("visit:device", ("visitors", "percentage")),
    "browsers": ("visit:browser", ("visitors", "percentage")),
    "browser_versions": ("visit:browser_version", ("visitors", "percentage")),
    "os": ("visit:os", ("visitors", "percentage")),
    "os_versions": ("visit:os_version", ("visitors", "percentage")),
    "countries": ("visit:country", ("visitors", "percentage")),
    "regions": ("visit:region", ("visitors", "percentage")),
    "cities": ("visit:city", ("visitors", "percentage")),
    "events": ("event:name", ("visitors", "events", "total_revenue")),
}
MAIN_METRICS = (
    "visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration",
    "total_revenue",
)  # fmt: skip
SESSION_METRICS = ("visits", "visit_duration", "views_per_visit", "bounce_rate")
DEFAULT_BREAKDOWN_LIMIT = 100


def _engine() -> QueryEngine:
    return current_app.config["MALLARD_ENGINE"]


def _error(status: int, message: str) -> Any:
    return jsonify({"error": message}), status


@blueprint.before_request
async def require_access() -> None:
    """A session, API key or shared link that may read the requested site.

    Raw exports need an account (session or key): a shared link only shows a
    dashboard. While no password exists at all, loopback clients may read.
    """
    await access.reader(
        await access.requested_site(), shared_links=request.endpoint != "stats.export_data"
    )


@blueprint.before_request
async def refuse_repeated_parameters() -> None:
    refuse_repeated(request.args)


def refuse_repeated(args: Any) -> None:
    """``period=day&period=7d`` is ambiguous: say so rather than pick one."""
    for name in args:
        if len(args.getlist(name)) > 1:
            raise QueryError(f"parameter {name} is given more than once")


def _parse(body: Any) -> Query:
    """The query, in its site's configured timezone unless it names one."""
    site = body.get("site_id") if isinstance(body, dict) else None
    settings = current_app.config["MALLARD_SETTINGS"]
    return parse_query(body, default_timezone=settings.site_timezone(site))


async def _answer(query: Query) -> Any:
    return jsonify(await run_query(_engine(), query))


@blueprint.post("/api/v2/query")
async def query_v2() -> Any:
    return await _answer(_parse(await access.json_body()))


def _legacy_query(
    metrics: tuple[str, ...] | list[str],
    dimensions: list[str],
    *,
    include: dict[str, Any] | None = None,
    pagination: dict[str, int] | None = None,
    comparable: bool = False,
    date_range: list[str] | None = None,
) -> Query:
    """A Query from the dashboard-style GET parameters: period, date, filters, ...

    ``compare`` is for ``comparable`` reports only; a report with its own ``date_range``
    refuses period and date."""
    args = request.args
    for name in ("period", "date"):
        if date_range and name in args:
            raise QueryError(f"{name} does not apply to this report (it has its own range)")
    body: dict[str, Any] = {
        "site_id": args.get("site_id"),
        "metrics": list(metrics),
        "dimensions": dimensions,
        **(
            {"date_range": date_range}
            if date_range
            else _date_fields(args.get("period", "30d"), args.get("date"))
        ),
        "include": include or {},
    }
    if "timezone" in args:
        body["timezone"] = args["timezone"]
    if pagination:
        body["pagination"] = pagination
    if args.get("filters"):
        body["filters"] = load_json(args["filters"], "filters")
    if args.get("compare") and not comparable:
        raise QueryError("compare applies to main, timeseries and breakdowns, not to this report")
    if args.get("compare") in ("previous_period", "year_over_year"):
        body["include"]["comparisons"] = {"mode": args["compare"]}
    elif args.get("compare"):
        raise QueryError("compare must be previous_period or year_over_year")
    return _parse(body)


def _date_fields(period: str, date: str | None) -> dict[str, Any]:
    """``period=custom&date=2024-01-01,2024-01-31``; with a preset, ``date`` anchors it
    (see :func:`~mallard.query.model.resolve_date_range`)."""
    if period == "custom":
        parts = (date or "").split(",")
        if len(parts) != 2:
            raise QueryError("period=custom needs date=START,END")
        explicit_range(parts, "UTC", "date")  # errors name the parameter the client sent
        return {"date_range": parts}
    if period not in DATE_PRESETS:
        raise QueryError(f"period must be one of {', '.join(DATE_PRESETS)} or custom")
    return {"date_range": period, **({"date": date} if date else {})}


def _positive_int(name: str, default: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise QueryError(f"{name} must be a whole number from 1 to {maximum}")
    return int(raw)


def _metrics_param(default: tuple[str, ...]) -> list[str]:
    raw = request.args.get("metrics")
    return raw.split(",") if raw else list(default)


@blueprint.errorhandler(QueryError)
async def bad_query(error: QueryError) -> Any:
    return _error(400, str(error))


@blueprint.errorhandler(QueryTimeout)
@blueprint.errorhandler(QueryTooLarge)
async def query_over_limits(error: QueryTimeout | QueryTooLarge) -> Any:
    return _error(503, str(error))


@blueprint.errorhandler(UnreadableFile)
async def unreadable_file(error: UnreadableFile) -> Any:
    """A broken file in the data dir: the operator's to remove, named without its full path."""
    log.error("cannot read %s: %s", error.path, error.reason, extra={"path": error.path})
    name = os.path.relpath(error.path, _engine().layout.root)
    return _error(500, f"the data file {name} cannot be read ({error.reason}); move it away")


@blueprint.get("/api/stats/main")
async def main_stats() -> Any:
    return await _answer(_legacy_query(_metrics_param(MAIN_METRICS), [], comparable=True))


@blueprint.get("/api/stats/timeseries")
async def timeseries() -> Any:
    interval = request.args.get("interval", "time")
    if interval not in ("time", "hour", "day", "week", "month"):
        raise QueryError("interval must be hour, day, week or month")
    dimension = "time" if interval == "time" else f"time:{interval}"
    return await _answer(
        _legacy_query(
            _metrics_param(("visitors", "pageviews")),
            [dimension],
            include={"time_labels": True},
            comparable=True,
        )
    )


@blueprint.get("/api/stats/breakdown/<path:name>")
async def breakdown(name: str) -> Any:
    if name.startswith("props/"):
        dimension, metrics = f"event:props:{name[6:]}", ("visitors", "events")
    elif name in BREAKDOWNS:
        dimension, metrics = BREAKDOWNS[name]
    else:
        raise QueryError(f"unknown breakdown {name!r}; known: {', '.join(BREAKDOWNS)}, props/KEY")
    limit = _positive_int("limit", DEFAULT_BREAKDOWN_LIMIT, 1000)
    page = _positive_int("page", 1, 1_000_000)
    return await _answer(
        _legacy_query(
            _metrics_param(metrics),
            [dimension],
            include={"total_rows": True},
            pagination={"limit": limit, "offset": (page - 1) * limit},
            comparable=True,
        )
    )


@blueprint.get("/api/stats/realtime")
async def realtime() -> Any:
    """Visitors seen in the last 5 minutes."""
    now = dt.datetime.now(dt.UTC)
    last_minutes = [(now - dt.timedelta(minutes=5)).isoformat(), now.isoformat()]
    result = await run_query(_engine(), _legacy_query(["visitors"], [], date_range=last_minutes))
    return jsonify({"visitors": result["results"][0]["metrics"][0]})


async def _fetch(
    query: Query, sql: str, parameters: dict[str, Any], derived: Derived = None
) -> list[tuple[Any, ...]]:
    _, rows = await _engine().fetch(
        sql,
        parameters,
        derived=derived,
        site_id=query.site_id,
        start=query.date_range.start,
        end=query.date_range.end,
    )
    return rows


@blueprint.get("/api/stats/funnel")
async def funnel() -> Any:
    """``steps=page:/,page:/pricing,event:signup``; ``window`` seconds (default a day)."""
    steps = funnels.parse_steps(request.args.get("steps", ""))
    window = _positive_int("window", 86_400, 366 * 86_400)
    query = _legacy_query(["visitors"], [])
    counts = await funnels.visitors_per_step(_engine(), query, steps, window)
    return jsonify({"steps": funnels.funnel_result(steps, counts), "window": window})


@blueprint.get("/api/stats/retention")
async def retention() -> Any:
    """Cohorts by first visit; ``interval`` is day, week (default) or month."""
    query = from_first_event(_engine(), _legacy_query(["visitors"], []))
    statement = behaviour.retention_sql(query, request.args.get("interval", "week"))
    rows = await _fetch(query, statement.sql, statement.parameters, statement.derived)
    return jsonify({"cohorts": behaviour.retention_result(rows)})


@blueprint.get("/api/stats/flow")
async def flow() -> Any:
    """The most common previous and next pages of ``page``."""
    page = request.args.get("page")
    if not page or not page.startswith("/"):
        raise QueryError("flow needs page=/some/path (starting with /)")
    limit = _positive_int("limit", 10, 100)
    query = _legacy_query(["visitors"], [])
    rows = await _fetch(query, *behaviour.flow_sql(query, page, limit))
    return jsonify(behaviour.flow_result(page, rows))


@blueprint.get("/api/stats/sessions")
async def sessions() -> Any:
    """Visit totals and their distribution by pages per visit and by duration."""
    query = _legacy_query(list(SESSION_METRICS), [])
    totals = await run_query(_engine(), query)
    rows = await _fetch(query, *behaviour.sessions_sql(query))
    return jsonify(
        {
            **dict(zip(SESSION_METRICS, totals["results"][0]["metrics"], strict=True)),
            **behaviour.sessions_result(rows),
        }
    )


@blueprint.get("/api/stats/export")
async def export_data() -> Any:
    """Raw events, or with ``dimension`` an aggregate table; csv, json (lines) or parquet."""
    fmt = request.args.get("format", "csv")
    if fmt not in export.ENCODERS:
        raise QueryError("format must be csv, json or parquet")
    dimension = request.args.get("dimension")
    dimensions = [dimension] if dimension else []
    query = _legacy_query(_metrics_param(("visitors", "pageviews")), dimensions)
    encoder = export.ENCODERS[fmt]()
    if dimension:
        batches: Any = _aggregate_pages(_engine(), query, dimension)
    else:
        sql, parameters = export.events_sql(query)
        batches = _engine().stream(
            sql,
            parameters,
            site_id=query.site_id,
            start=query.date_range.start,
            end=query.date_range.end,
        )

    # Started before the response: a query that cannot start is an error, not a cut-off file.
    first = await anext(batches)

    async def body() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(batches):
            if chunk := encoder(first):
                yield chunk
            async for batch in batches:
                if chunk := encoder(batch):
                    yield chunk
        if tail := encoder.finish():
            yield tail

    name = f"{query.site_id}-{query.date_range.first_day}-{query.date_range.last_day}.{fmt}"
    return Response(
        body(),
        content_type=export.CONTENT_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


async def _aggregate_pages(
    engine: QueryEngine, query: Query, dimension: str
) -> AsyncIterator[pa.RecordBatch]:
    """Every row of an aggregate export (at least one batch, maybe empty), asked for a
    page of ``MAX_LIMIT`` rows at a time as the Stats API answers them."""
    offset = 0
    while True:
        page = dataclasses.replace(query, limit=MAX_LIMIT, offset=offset)
        results = (await run_query(engine, page))["results"]
        yield export.aggregate_batch(dimension, list(query.metrics), results)
        if len(results) < MAX_LIMIT:
            return
        offset += MAX_LIMIT


@blueprint.get("/api/stats/dropped")
async def dropped_events() -> Any:
    """What ingestion dropped and why: per UTC day and reason, and the top bot user agents."""
    query = _legacy_query(["visitors"], [])
    writer = current_app.config["MALLARD_WRITER"]
    report = await dropped.report(
        _engine(),
        writer.drops if writer else None,
        query.site_id,
        query.date_range.start,
        query.date_range.end,
        bots=_positive_int("limit", 10, 100),
    )
    return jsonify(report)
