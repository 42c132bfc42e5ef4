"""The tracking script ``GET /mallard.js``: its route, its size, and a real Chromium running it.

The browser tests join three real parts: a Mallard server (``start_server``), a web site
on another origin (a small HTTP server whose pages embed the script) and the system's
headless Chromium, driven by Playwright. Chromium resolves every ``*.test`` name to
127.0.0.1, so the site is ``http://shop.test:PORT`` and Mallard is
``http://analytics.test:PORT`` (also reachable as ``ingest.test``, used for ``data-api``).
Events are read back through Mallard's export route, which includes events not yet
flushed. Each browser test saves a screenshot under ``tests/artifacts/``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import rjsmin
import trio
from playwright.sync_api import BrowserContext, Page, Request

from mallard.web.routes import TRACKER
from tests.browser import (  # noqa: F401 (chromium_fixture: the chromium fixture)
    REPORT_CSP_VIOLATIONS,
    Chromium,
    chromium_fixture,
    screenshot_path,
)
from tests.conftest import BROWSER_UA, RunningServer

T = TypeVar("T")

SCRIPT = Path(__file__).resolve().parent.parent / "mallard" / "web" / "static" / "mallard.js"
SIZE_BUDGET = 1536  # bytes, minified and gzipped
SITE = "shop.test"
NONCE = "mallard-test-nonce"


# --- the route and the size, without a browser ---


async def test_script_is_served_with_a_strong_etag_and_revalidated(server: RunningServer) -> None:
    url = f"{server.url}/mallard.js"
    plain = await server.client.get(url, headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "text/javascript; charset=utf-8"
    assert plain.headers["cache-control"] == "public, max-age=86400"
    assert "content-encoding" not in plain.headers
    assert plain.headers["cross-origin-resource-policy"] == "cross-origin"  # any page embeds it
    assert plain.content == SCRIPT.read_bytes()
    etag = plain.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)  # strong: no W/ prefix

    compressed = await server.client.get(url, headers={"Accept-Encoding": "gzip"})
    assert compressed.headers["content-encoding"] == "gzip"
    assert compressed.content == plain.content  # httpx decoded it
    assert compressed.headers["etag"] == etag[:-1] + '-gzip"'
    assert compressed.headers["vary"] == "Accept-Encoding"

    for encoding, tag in (("identity", etag), ("gzip", compressed.headers["etag"])):
        revalidated = await server.client.get(
            url, headers={"Accept-Encoding": encoding, "If-None-Match": tag}
        )
        assert revalidated.status_code == 304
        assert revalidated.content == b""
        assert revalidated.headers["etag"] == tag
    stale = await server.client.get(
        url, headers={"Accept-Encoding": "identity", "If-None-Match": '"0123"'}
    )
    assert stale.status_code == 200
    assert stale.content == plain.content


def test_etag_is_the_content_hash() -> None:
    body, etag = TRACKER.representation(gzipped=False)
    assert body == SCRIPT.read_bytes()
    assert TRACKER.representation(gzipped=True) == (gzip.compress(body, 9, mtime=0), f"{etag}-gzip")
    assert etag == hashlib.sha256(body).hexdigest()[:32]


def test_script_minified_and_gzipped_fits_the_budget() -> None:
    minified = rjsmin.jsmin(SCRIPT.read_text(encoding="utf-8"))
    size = len(gzip.compress(minified.encode(), compresslevel=9))
    print(f"mallard.js: {SCRIPT.stat().st_size} bytes source, {size} bytes minified and gzipped")
    assert 0 < size <= SIZE_BUDGET, f"{size} bytes minified and gzipped (budget {SIZE_BUDGET})"


# --- the browser, the site and the Mallard server, on their own threads and loop ---


@dataclasses.dataclass(frozen=True)
class Resource:
    body: bytes
    headers: dict[str, str]


class Site:
    """The web site being measured: a real HTTP server on its own port, serving what a
    test puts in ``resources`` (by path, whatever the host name)."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        resources = self.resources

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = resources.get(urlsplit(self.path).path)
                if found is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                for name, value in {**found.headers, "Cache-Control": "no-store"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(found.body)))
                self.end_headers()
                self.wfile.write(found.body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the tests assert on what matters."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str, host: str = SITE) -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    served = Site()
    yield served
    served.close()


@dataclasses.dataclass(frozen=True)
class Sent:
    """A request the page made to Mallard's event endpoint."""

    url: str
    resource_type: str
    content_type: str | None
    body: dict[str, Any]


@dataclasses.dataclass
class Tab:
    """One browser context and page, driven from trio, and what it saw."""

    chromium: Chromium
    context: BrowserContext
    page: Page
    endpoints: tuple[str, ...]
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    sent: list[Sent] = dataclasses.field(default_factory=list)
    storage: dict[str, Any] = dataclasses.field(default_factory=dict)

    def listen(self) -> None:
        """Collect console errors and warnings, uncaught exceptions and event requests."""
        self.context.add_init_script(REPORT_CSP_VIOLATIONS)
        kinds = {"error": self.errors, "warning": self.warnings}
        self.page.on("console", lambda m: kinds[m.type].append(m.text) if m.type in kinds else None)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.context.on("request", self._record)

    def _record(self, request: Request) -> None:
        if request.url in self.endpoints:
            content_type = request.headers.get("content-type")
            body = json.loads(request.post_data or "null")
            self.sent.append(Sent(request.url, request.resource_type, content_type, body))

    async def do(self, action: Callable[[Page], T]) -> T:
        return await self.chromium.call(action, self.page)

    async def evaluate(self, expression: str) -> Any:
        return await self.do(lambda page: page.evaluate(expression))

    def finish(self, screenshot: Path) -> None:
        """Screenshot, what the browser stored (cookies, local storage), then close."""
        try:
            self.page.screenshot(path=screenshot, full_page=True)
            self.storage = {
                **self.context.storage_state(),
                "sessionStorage": self.page.evaluate("sessionStorage.length"),
            }
        finally:
            self.context.close()


@dataclasses.dataclass
class Stage:
    """Mallard, the site and Chromium, ready for one test."""

    mallard: RunningServer
    site: Site
    chromium: Chromium
    test_name: str

    @property
    def mallard_port(self) -> int | None:
        return urlsplit(self.mallard.url).port

    @property
    def script_origin(self) -> str:
        return f"http://analytics.test:{self.mallard_port}"

    @property
    def api(self) -> str:
        """The ``data-api`` endpoint: Mallard under another name than the script's."""
        return f"http://ingest.test:{self.mallard_port}/api/event"

    def page(
        self,
        path: str,
        *,
        attributes: str = "",
        head: str = "",
        body: str = "",
        connect_src: str | None = None,
        loading: str = "defer",
    ) -> str:
        """Put an HTML page embedding the tracker on the site, under a strict CSP;
        ``loading`` is how the tag loads the script (``defer``, ``type="module"``)."""
        connect_src = connect_src or f"{self.script_origin} http://ingest.test:{self.mallard_port}"
        html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Shop</title><link rel="icon" href="data:,">
{head}
<script {loading} src="{self.script_origin}/mallard.js" data-domain="{SITE}" {attributes}></script>
</head><body><h1>Shop: {path}</h1>{body}</body></html>"""
        csp = (
            f"default-src 'none'; script-src 'nonce-{NONCE}' {self.script_origin}; "
            f"connect-src {connect_src}; img-src data:"
        )
        headers = {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": csp}
        self.site.resources[path] = Resource(html.encode(), headers)
        return self.site.url(path)

    @asynccontextmanager
    async def visit(self, url: str, *, referer: str | None = None) -> AsyncIterator[Tab]:
        """Open ``url`` in a fresh browser context; screenshot and close it afterwards."""
        endpoints = (f"{self.script_origin}/api/event", self.api)

        def open_tab() -> Tab:
            context = self.chromium.browser.new_context(user_agent=BROWSER_UA)
            tab = Tab(self.chromium, context, context.new_page(), endpoints)
            tab.listen()
            tab.page.goto(url, referer=referer)
            return tab

        tab = await self.chromium.call(open_tab)
        try:
            yield tab
        finally:
            await self.chromium.call(tab.finish, screenshot_path(self.test_name))

    async def stored(self, count: int) -> list[dict[str, Any]]:
        """Mallard's events for the site, once there are ``count`` (read-your-writes)."""
        events: list[dict[str, Any]] = []
        with trio.move_on_after(10):
            while len(events) < count:
                await trio.sleep(0.05)
                events = await self.stored_now()
        assert len(events) == count, events
        return events

    async def stored_now(self) -> list[dict[str, Any]]:
        response = await self.mallard.client.get(
            f"{self.mallard.url}/api/stats/export",
            params={"site_id": SITE, "period": "7d", "format": "json"},
        )
        assert response.status_code == 200, response.text
        return [json.loads(line) for line in response.text.splitlines()]


@pytest.fixture
async def stage(
    start_server: Any, site: Site, chromium: Chromium, request: pytest.FixtureRequest
) -> Stage:
    # The allowlist holds the site's host (and localhost, for data-allow-local): every
    # event below passes the real Origin check.
    mallard = await start_server(site_ids=(SITE, "localhost"))
    return Stage(mallard, site, chromium, request.node.name)


def clean(tab: Tab) -> None:
    """No console errors, no CSP violations, and nothing stored in the browser."""
    assert tab.errors == []
    assert tab.storage["cookies"] == []
    assert tab.storage["origins"] == []  # local storage of every origin visited
    assert tab.storage["sessionStorage"] == 0


def names_and_paths(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["event_name"], event["pathname"]) for event in events]


# --- the script in the browser ---


async def test_pageview_on_load(stage: Stage) -> None:
    url = stage.page("/pricing")
    async with stage.visit(f"{url}?utm_campaign=launch", referer="https://github.com/") as tab:
        [event] = await stage.stored(1)
    assert event["event_name"] == "pageview"
    assert event["hostname"] == SITE
    assert event["pathname"] == "/pricing"
    assert event["utm_campaign"] == "launch"
    assert event["referrer"] == "https://github.com/"
    assert event["referrer_source"] == "GitHub"
    assert event["screen_width"] == 1280  # the default viewport
    assert event["device_type"] == "Laptop"
    assert event["browser"] == "Chrome"
    # Without data-api the endpoint is api/event beside the script; a beacon, as text/plain
    # (a CORS-safelisted type: no preflight).
    [sent] = tab.sent
    assert sent.url == f"{stage.script_origin}/api/event"
    assert sent.resource_type == "ping"
    assert sent.content_type == "text/plain;charset=UTF-8"
    assert sent.body["d"] == SITE
    clean(tab)


async def test_spa_navigation_sends_a_pageview_per_new_path(stage: Stage) -> None:
    url = stage.page("/app", attributes=f'data-api="{stage.api}"')
    async with stage.visit(url) as tab:
        await stage.stored(1)
        await tab.evaluate("history.pushState({}, '', '/app/settings')")
        await stage.stored(2)
        # Same path: a replaceState with a new query, a fragment without data-hash: nothing.
        await tab.evaluate("history.replaceState({}, '', '/app/settings?tab=2')")
        await tab.evaluate("location.hash = 'billing'")
        await tab.evaluate("history.replaceState({}, '', '/app/profile')")
        await stage.stored(3)
        # popstate: the fragment made a history entry of its own, which /app/profile
        # replaced; back is /app/settings.
        await tab.evaluate("history.back()")
        events = await stage.stored(4)
    assert names_and_paths(events) == [
        ("pageview", "/app"),
        ("pageview", "/app/settings"),
        ("pageview", "/app/profile"),
        ("pageview", "/app/settings"),
    ]
    assert [sent.url for sent in tab.sent] == [stage.api] * 4
    clean(tab)


async def test_hash_routing(stage: Stage) -> None:
    url = stage.page("/", attributes=f'data-api="{stage.api}" data-hash')
    async with stage.visit(f"{url}#/home") as tab:
        await stage.stored(1)
        await tab.evaluate("location.hash = '#/cart'")
        await stage.stored(2)
        await tab.evaluate("history.back()")
        events = await stage.stored(3)
    assert names_and_paths(events) == [
        ("pageview", "/#/home"),
        ("pageview", "/#/cart"),
        ("pageview", "/#/home"),
    ]
    assert {sent.body["h"] for sent in tab.sent} == {1}
    clean(tab)


async def test_custom_events_with_props_revenue_and_callback(stage: Stage) -> None:
    url = stage.page("/checkout", attributes=f'data-api="{stage.api}"')
    async with stage.visit(url) as tab:
        await stage.stored(1)
        answer = await tab.evaluate(
            """new Promise((resolve) => mallard("purchase", {
                props: {plan: "pro", seats: 3},
                revenue: 19.99,
                currency: "EUR",
                callback: resolve,
            }))"""
        )
        assert answer == {"status": 202}
        await tab.evaluate(
            """mallard("refund", {revenue: {amount: "5.50", currency: "USD"}})"""
        )  # Plausible's form
        events = await stage.stored(3)
    assert [event["event_name"] for event in events] == ["pageview", "purchase", "refund"]
    _, purchase, refund = events
    assert (purchase["event_name"], purchase["pathname"]) == ("purchase", "/checkout")
    assert json.loads(purchase["props"]) == {"plan": "pro", "seats": 3}
    assert Decimal(purchase["revenue_amount"]) == Decimal("19.99")
    assert purchase["revenue_currency"] == "EUR"
    assert Decimal(refund["revenue_amount"]) == Decimal("5.50")
    assert refund["revenue_currency"] == "USD"
    # With a callback the event goes by fetch (keepalive) so that the answer can be read.
    assert [sent.resource_type for sent in tab.sent] == ["ping", "fetch", "ping"]
    assert all(sent.content_type == "text/plain;charset=UTF-8" for sent in tab.sent)
    clean(tab)


async def test_calls_queued_before_the_script_loads_are_sent(stage: Stage) -> None:
    stub = (
        f'<script nonce="{NONCE}">'
        "window.mallard = window.mallard || function () {"
        " (window.mallard.q = window.mallard.q || []).push(arguments) };"
        'mallard("early", {props: {from: "queue"}});'
        "</script>"
    )
    url = stage.page("/welcome", attributes=f'data-api="{stage.api}"', head=stub)
    async with stage.visit(url) as tab:
        events = await stage.stored(2)
        assert await tab.evaluate("typeof mallard.q") == "undefined"  # the real function now
    assert sorted(names_and_paths(events)) == [("early", "/welcome"), ("pageview", "/welcome")]
    [early] = [event for event in events if event["event_name"] == "early"]
    assert json.loads(early["props"]) == {"from": "queue"}
    clean(tab)


LINKS = """
<p><a id="outbound" href="{away}">a partner site</a></p>
<p><a id="download" href="/files/report.pdf">the report (PDF)</a></p>
<p><a id="notes" href="/files/notes.md">the notes</a></p>
<p><a id="internal" href="/about">about us</a></p>
"""


def put_link_targets(stage: Stage) -> str:
    """The pages and files the links lead to; returns the outbound URL."""
    plain = {"Content-Type": "text/html; charset=utf-8"}
    for path in ("/away", "/about"):
        html = f'<!doctype html><title>{path}</title><link rel="icon" href="data:,">'
        stage.site.resources[path] = Resource(html.encode(), plain)
    for name, content_type in (("report.pdf", "application/pdf"), ("notes.md", "text/markdown")):
        attachment = {"Content-Type": content_type, "Content-Disposition": "attachment"}
        stage.site.resources[f"/files/{name}"] = Resource(b"%PDF-1.4\n", attachment)
    return stage.site.url("/away", host="partner.test")


async def test_outbound_link_clicks_are_events_when_opted_in(stage: Stage) -> None:
    away = put_link_targets(stage)
    url = stage.page(
        "/links",
        attributes=f'data-api="{stage.api}" data-outbound-links',
        body=LINKS.format(away=away),
    )
    async with stage.visit(url) as tab:
        await stage.stored(1)
        await tab.do(lambda page: page.click("#outbound", button="middle"))  # a new tab
        await stage.stored(2)
        # The page unloads right after the click; the beacon still arrives.
        await tab.do(lambda page: page.click("#outbound"))
        await tab.do(lambda page: page.wait_for_url(away))
        events = await stage.stored(3)
    assert names_and_paths(events) == [
        ("pageview", "/links"),
        ("Outbound Link: Click", "/links"),
        ("Outbound Link: Click", "/links"),
    ]
    assert [json.loads(event["props"]) for event in events[1:]] == [{"url": away}] * 2
    clean(tab)


def download(page: Page, selector: str) -> str:
    with page.expect_download() as started:
        page.click(selector)
    return started.value.suggested_filename


@pytest.mark.parametrize(
    ("attribute", "recorded"),
    [
        ("data-file-downloads", "report.pdf"),
        ('data-file-downloads="md,txt"', "notes.md"),
        ('data-file-downloads="TXT, MD"', "notes.md"),  # spaces and capitals
    ],
)
async def test_file_download_clicks_are_events_when_opted_in(
    stage: Stage, attribute: str, recorded: str
) -> None:
    away = put_link_targets(stage)
    url = stage.page(
        "/links", attributes=f'data-api="{stage.api}" {attribute}', body=LINKS.format(away=away)
    )
    async with stage.visit(url) as tab:
        await stage.stored(1)
        for link in ("#download", "#notes"):
            await tab.do(lambda page, link=link: download(page, link))
        await tab.do(lambda page: page.click("#outbound"))  # not opted in
        await tab.do(lambda page: page.wait_for_url(away))
        events = await stage.stored(2)
    assert names_and_paths(events) == [("pageview", "/links"), ("File Download", "/links")]
    assert json.loads(events[1]["props"]) == {"url": stage.site.url(f"/files/{recorded}")}
    assert len(tab.sent) == 2
    clean(tab)


async def test_link_clicks_are_not_events_without_opt_in(stage: Stage) -> None:
    away = put_link_targets(stage)
    url = stage.page("/links", attributes=f'data-api="{stage.api}"', body=LINKS.format(away=away))
    async with stage.visit(url) as tab:
        await stage.stored(1)
        await tab.do(lambda page: download(page, "#download"))
        await tab.do(lambda page: page.click("#internal"))
        await tab.do(lambda page: page.wait_for_url(stage.site.url("/about")))
        await tab.do(lambda page: page.go_back())
        await stage.stored(2)  # the page loaded again: its pageview
        await tab.do(lambda page: page.click("#outbound"))
        await tab.do(lambda page: page.wait_for_url(away))
    assert names_and_paths(await stage.stored_now()) == [("pageview", "/links")] * 2
    assert len(tab.sent) == 2
    clean(tab)


def local_page(stage: Stage, tmp_path: Path, where: str, attributes: str = "") -> str:
    """A tracker page on localhost (the site's server) or in a file (file://)."""
    url = stage.page("/local", attributes=f'data-api="{stage.api}" {attributes}')
    if where == "localhost":
        return url.replace(SITE, "localhost")
    path = tmp_path / "local.html"
    path.write_bytes(stage.site.resources["/local"].body)
    return path.as_uri()


@pytest.mark.parametrize("where", ["localhost", "file"])
async def test_does_nothing_on_local_pages(stage: Stage, tmp_path: Path, where: str) -> None:
    async with stage.visit(local_page(stage, tmp_path, where)) as tab:
        answer = await tab.evaluate(
            'new Promise((resolve) => mallard("signup", {callback: resolve}))'
        )
        await tab.evaluate("history.pushState({}, '', '#/elsewhere')")
    assert answer == {"ignored": True}
    assert tab.sent == []
    assert await stage.stored_now() == []
    assert [w for w in tab.warnings if w.startswith("Mallard:")] == [
        "Mallard: not recording on a local page; add data-allow-local to record"
    ]
    clean(tab)


async def test_allow_local_records_on_localhost(stage: Stage, tmp_path: Path) -> None:
    url = local_page(stage, tmp_path, "localhost", attributes="data-allow-local")
    async with stage.visit(url) as tab:
        [event] = await stage.stored(1)
    assert (event["hostname"], event["pathname"]) == ("localhost", "/local")
    assert tab.warnings == []
    clean(tab)


async def test_allow_local_records_a_file_page_as_localhost(
    start_server: Any,
    site: Site,
    chromium: Chromium,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    # No allowlist: a file page's Origin is "null", which no site id matches.
    stage = Stage(await start_server(), site, chromium, request.node.name)
    url = local_page(stage, tmp_path, "file", attributes="data-allow-local")
    async with stage.visit(url) as tab:
        [event] = await stage.stored(1)
    assert (event["hostname"], event["pathname"]) == ("localhost", url.removeprefix("file://"))
    assert tab.warnings == []
    assert tab.errors == []


async def test_sends_with_fetch_where_there_is_no_beacon(stage: Stage) -> None:
    no_beacon = f'<script nonce="{NONCE}">delete Navigator.prototype.sendBeacon;</script>'
    url = stage.page("/old", attributes=f'data-api="{stage.api}"', head=no_beacon)
    async with stage.visit(url) as tab:
        [event] = await stage.stored(1)
    assert names_and_paths([event]) == [("pageview", "/old")]
    assert [sent.resource_type for sent in tab.sent] == ["fetch"]
    clean(tab)


async def test_works_as_a_module_script(stage: Stage) -> None:
    """A module has no ``document.currentScript``: the tag is found by its ``src``."""
    url = stage.page("/modern", attributes=f'data-api="{stage.api}"', loading='type="module"')
    async with stage.visit(url) as tab:
        [event] = await stage.stored(1)
        answer = await tab.evaluate(
            'new Promise((resolve) => mallard("signup", {callback: resolve}))'
        )
    assert answer == {"status": 202}
    assert names_and_paths([event]) == [("pageview", "/modern")]
    assert {sent.url for sent in tab.sent} == {stage.api}  # data-api was read
    clean(tab)


async def test_a_csp_that_blocks_the_endpoint_is_reported(stage: Stage) -> None:
    """The harness sees CSP violations: a page that does not allow Mallard fails ``clean``."""
    url = stage.page("/strict", attributes=f'data-api="{stage.api}"', connect_src="'self'")
    async with stage.visit(url) as tab:
        await tab.evaluate('new Promise((resolve) => mallard("signup", {callback: resolve}))')
    assert any(error.startswith("CSP violation: connect-src") for error in tab.errors), tab.errors
    assert await stage.stored_now() == []
