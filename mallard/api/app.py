"""The Quart-trio application: every route except the ingestion fast path."""

from __future__ import annotations

import os
from typing import Any

from quart import Response, jsonify
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from mallard import __version__
from mallard.api import stats
from mallard.config import Settings
from mallard.query.engine import QueryEngine
from mallard.storage.writer import EventWriter


def json_error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def create_app(*, settings: Settings, writer: EventWriter, engine: QueryEngine) -> QuartTrio:
    app = QuartTrio("mallard")
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.config["MALLARD_SETTINGS"] = settings
    app.config["MALLARD_ENGINE"] = engine
    app.register_blueprint(stats.blueprint)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Any:
        return json_error(error.code or 500, error.description or error.name)

    @app.get("/health")
    async def health() -> Any:
        return "ok", 200, {"content-type": "text/plain; charset=utf-8", "cache-control": "no-store"}

    @app.get("/health/ready")
    async def ready() -> Any:
        problems = []
        if writer.failing or not os.access(writer.layout.events, os.W_OK):
            problems.append("storage is not writable")
        if not await engine.ping():
            problems.append("query engine does not answer")
        body = {
            "status": "unavailable" if problems else "ready",
            "problems": problems,
            "pending_events": writer.pending,
            "version": __version__,
        }
        return jsonify(body), 503 if problems else 200

    return app
