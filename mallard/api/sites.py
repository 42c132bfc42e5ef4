"""``GET /api/sites``: the sites the caller may read, for the dashboard's site picker."""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint, current_app, jsonify

from mallard.auth import access
from mallard.auth.policy import can_read
from mallard.config import Settings
from mallard.query.engine import QueryEngine

blueprint = Blueprint("sites", __name__)


def site_list(settings: Settings, with_data: set[str]) -> list[dict[str, Any]]:
    """Configured sites in their order, then every other site with data, by name."""
    zones = dict(settings.sites)
    names = list(zones) + sorted(with_data - zones.keys())
    return [
        {"site_id": name, "timezone": zones.get(name, "UTC"), "has_data": name in with_data}
        for name in names
    ]


@blueprint.get("/api/sites")
async def list_sites() -> Any:
    principal = await access.reader(None)
    settings: Settings = current_app.config["MALLARD_SETTINGS"]
    engine: QueryEngine = current_app.config["MALLARD_ENGINE"]
    writer = current_app.config["MALLARD_WRITER"]
    with_data = engine.site_ids()
    if writer is not None:  # other workers' first events, not flushed yet
        with_data |= await trio.to_thread.run_sync(writer.sites_logged_elsewhere)
    sites = site_list(settings, with_data)
    return jsonify({"sites": [site for site in sites if can_read(principal, site["site_id"])]})
