"""The Quart-trio application: every route except the ingestion fast path."""

from __future__ import annotations

import os
import time
from typing import Any

import trio
from quart import Response, g, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from mallard import __version__
from mallard.api import auth, gdpr, sites, stats
from mallard.auth.headers import add_security_headers
from mallard.auth.service import AuthService
from mallard.config import Settings
from mallard.metrics import Metrics, bearer_token_matches
from mallard.query.engine import QueryEngine
from mallard.storage.writer import EventWriter
from mallard.web import routes as web


def json_error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def create_app(
    *,
    settings: Settings,
    writer: EventWriter,
    engine: QueryEngine,
    metrics: Metrics | None = None,
) -> QuartTrio:
    metrics = metrics or Metrics()
    app = QuartTrio("mallard")
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.config["MALLARD_SETTINGS"] = settings
    app.config["MALLARD_ENGINE"] = engine
    app.config["MALLARD_WRITER"] = writer
    app.config["MALLARD_AUTH"] = AuthService(settings)
    app.register_blueprint(stats.blueprint)
    app.register_blueprint(sites.blueprint)
    app.register_blueprint(gdpr.blueprint)
    app.register_blueprint(auth.blueprint)
    app.after_request(add_security_headers)
    app.register_blueprint(web.blueprint)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Any:
        return json_error(error.code or 500, error.description or error.name)

    @app.get("/health")
    async def health() -> Any:
        return "ok", 200, {"content-type": "text/plain; charset=utf-8", "cache-control": "no-store"}

    @app.get("/health/ready")
    async def ready() -> Any:
        problems = []
        await writer.recheck()
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

    @app.get("/metrics")
    async def prometheus_metrics() -> Any:
        token = settings.metrics_token
        if token and not bearer_token_matches(request.headers.get("Authorization"), token):
            body, status = json_error(401, "/metrics needs Authorization: Bearer <metrics_token>")
            return body, status, {"WWW-Authenticate": "Bearer"}
        text, content_type = await trio.to_thread.run_sync(
            metrics.exposition, request.headers.get("Accept")
        )
        return text, 200, {"content-type": content_type, "cache-control": "no-store"}

    @app.before_request
    async def start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    async def time_stats_answer(response: Response) -> Response:
        """Stats answers (until they start: exports stream on) by route, for /metrics."""
        rule, started = request.url_rule, g.get("started")
        if request.blueprint == "stats" and rule and started and response.status_code < 400:
            metrics.observe_query(rule.rule, time.perf_counter() - started)
        return response

    return app
