"""``DELETE /api/gdpr/erase``: a site's events in a range, removed from everywhere.

``site_id``, ``from`` and ``to`` (dates, both included, in the site's time zone
or ``timezone``; or ISO datetimes, ``to`` excluded). Needs an account that
administers the site. See :mod:`mallard.storage.erasure` for what happens.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import trio
from quart import Blueprint, current_app, jsonify, request

from mallard.api.stats import refuse_repeated
from mallard.auth import access
from mallard.auth.policy import can_manage_site
from mallard.auth.service import Denied
from mallard.ingest.privacy import floor_to_hour
from mallard.query.model import QueryError, explicit_range, validate_site_id, validate_timezone
from mallard.storage.erasure import Unwritten, carry_out, record_erasure
from mallard.storage.writer import EventWriter

blueprint = Blueprint("gdpr", __name__)


@blueprint.delete("/api/gdpr/erase")
async def erase_range() -> Any:
    principal = await access.account()
    args = request.args
    settings = current_app.config["MALLARD_SETTINGS"]
    try:
        refuse_repeated(args)
        site_id = validate_site_id(args.get("site_id"))
        if not args.get("from") or not args.get("to"):
            raise QueryError("from and to are required: dates (YYYY-MM-DD) or ISO datetimes")
        timezone = validate_timezone(args.get("timezone", settings.site_timezone(site_id)))
        dates = explicit_range([args["from"], args["to"]], timezone, "from/to")
    except QueryError as error:
        return jsonify({"error": str(error)}), 400
    hour = dt.datetime.fromtimestamp(floor_to_hour(time.time_ns() // 1000) / 1e6, dt.UTC)
    if settings.round_timestamps and dates.end > hour:
        # Stored as HH:00, the events of this hour accepted before the erasure and
        # those accepted after it look the same: a tombstone over them would drop both.
        error = (
            f"with round_timestamps, events from {hour.isoformat()} on cannot be told apart "
            f"from later ones until the hour is over: erase up to to={hour.isoformat()} now "
            "(from and to as datetimes), and the rest after the hour"
        )
        return jsonify({"error": error}), 409
    if not can_manage_site(principal, site_id):
        raise Denied(403, f"erasing needs an admin or owner of {site_id!r}")
    writer: EventWriter = current_app.config["MALLARD_WRITER"]
    with trio.CancelScope(shield=True):  # once recorded, carried out (or at the next start)
        tombstone = await trio.to_thread.run_sync(
            record_erasure, writer.layout, writer.tombstones, site_id, dates.start, dates.end
        )
        unwritten = writer.unflushed(with_erased=True)  # what was accepted until the tombstone

        def everyones_unwritten() -> Unwritten:
            return [*unwritten, *writer.logged_elsewhere(with_erased=True)]

        report = await trio.to_thread.run_sync(
            carry_out, writer.layout, writer.tombstones, tombstone, everyones_unwritten
        )
    body = {
        "site_id": site_id,
        "from": dates.start.isoformat(),
        "to": dates.end.isoformat(),
        "rows_erased": report.rows_erased + report.unwritten_rows_erased,
        "unwritten_rows_erased": report.unwritten_rows_erased,
        "files_rewritten": report.files_rewritten,
        "files_removed": report.files_removed,
    }
    if report.files_unreadable:  # the rest is erased; these stay until fixed or removed
        unreadable = ", ".join(report.files_unreadable)
        body["error"] = (
            f"cannot read {unreadable} as events: fix or remove them; "
            "every start of the server tries this erasure again"
        )
        body["files_unreadable"] = report.files_unreadable
        return jsonify(body), 503
    return jsonify(body)
