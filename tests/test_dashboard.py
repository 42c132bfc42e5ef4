"""The dashboard at ``GET /`` in a real headless Chromium, against a real Mallard server.

The traffic comes from the synthetic generator; every number the dashboard shows is
compared with the stats API's answer to the same question, as text in the en-US
locale. Each test also fails on a console error or a Content-Security-Policy
violation, and saves screenshots under ``tests/artifacts/``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, expect

from mallard.synthetic import generate
from mallard.web.routes import DASHBOARD_ASSETS, INDEX
from tests.browser import (  # noqa: F401 (chromium_fixture: the chromium fixture)
    REPORT_CSP_VIOLATIONS,
    Chromium,
    chromium_fixture,
    screenshot_path,
)
from tests.conftest import BROWSER_UA, RunningServer
from tests.test_auth_api import PASSWORD, log_in

T = TypeVar("T")

SITE = "example.com"
EMPTY_SITE = "empty.example"
ZONE = "Europe/Berlin"
SITES = ((SITE, ZONE), (EMPTY_SITE, "UTC"))
DASHBOARD = "dashboard-screen"
PERCENTAGES = {"bounce_rate", "conversion_rate", "percentage"}
GOALS_FILTER = ["is_not", "event:name", ["pageview"]]  # the goals panel lists custom events
REFUSED = "Failed to load resource: the server responded with a status of 401"

# --- what the page shows, read in the page ---

CARDS = """() => Object.fromEntries([...document.querySelectorAll("#cards .card")].map((card) => [
  card.dataset.metric,
  [
    card.querySelector(".card-value").textContent,
    card.querySelector(".change")?.textContent ?? null,
  ],
]))"""
CHART = """() => {
  const line = document.querySelector("#chart .line.current");
  const previous = document.querySelector("#chart .line.previous");
  return {
    title: document.querySelector("#chart-title").textContent,
    points: Number(line.dataset.points),
    commands: (line.getAttribute("d").match(/[ML]/g) ?? []).length,
    previous: (previous?.getAttribute("d").match(/[ML]/g) ?? []).length,
    rows: [...document.querySelectorAll("#chart-table tbody tr")].map((row) =>
      [row.dataset.label, ...[...row.querySelectorAll("td")].map((cell) => cell.textContent)]),
  };
}"""
ROWS = """(panel) => [...document.querySelectorAll(`#panel-${panel} tbody tr`)].map((row) => [
  row.querySelector(".row-button").dataset.value,
  ...[...row.querySelectorAll("td")].map((cell) => cell.textContent),
])"""
FUNNEL = """() => [...document.querySelectorAll(".funnel-step")].map((step) => [
  step.querySelector(".step-name").textContent,
  step.querySelector(".step-visitors").textContent,
  step.querySelector(".step-conversion").textContent,
  step.querySelector(".step-dropoff")?.textContent ?? null,
])"""
RETENTION = """() => [...document.querySelectorAll(".retention tbody tr")].map((row) => [
  row.dataset.cohort,
  ...[...row.querySelectorAll("td")].map((cell) => cell.textContent),
])"""
FLOW = """() => Object.fromEntries(["previous", "next"].map((direction) => [direction,
  [...document.querySelectorAll(`.flow-${direction} li`)].map((item) =>
    [item.dataset.page, item.querySelector(".flow-views").textContent])]))"""


# --- the same numbers as text, from the API's answers (en-US) ---


def duration(seconds: float) -> str:
    total = round(seconds)
    hours, minutes, rest = total // 3600, total % 3600 // 60, total % 60
    parts = [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes else []
    parts += [f"{rest}s"] if rest or not parts else []
    return " ".join(parts)


def shown(metric: str, value: float | None) -> str:
    """A metric's value as the dashboard writes it."""
    if value is None:
        return "\u2013"  # an en dash
    if metric == "visit_duration":
        return duration(value)
    if metric == "total_revenue":
        return f"{value:,.2f}"
    text = f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{text}%" if metric in PERCENTAGES else text


def shown_change(metric: str, change: int | None) -> str:
    if change is None:
        return "new"
    arrow = "↑" if change > 0 else "↓" if change < 0 else "→"
    return f"{arrow} {abs(change):,}{' pp' if metric == 'bounce_rate' else '%'}"


def expected_cards(answer: dict[str, Any]) -> dict[str, list[str | None]]:
    [row] = answer["results"]
    comparison = row.get("comparison")
    cards = {}
    for i, metric in enumerate(answer["query"]["metrics"]):
        value, before = row["metrics"][i], comparison["metrics"][i] if comparison else None
        if metric == "total_revenue" and not value and not before:
            continue  # revenue only when there is some
        change = shown_change(metric, comparison["change"][i]) if comparison else None
        cards[metric] = [shown(metric, value), change]
    return cards


def expected_rows(answer: dict[str, Any]) -> list[list[str]]:
    metrics = answer["query"]["metrics"]
    return [
        [row["dimensions"][0], *(shown(m, v) for m, v in zip(metrics, row["metrics"], strict=True))]
        for row in answer["results"]
    ]


def day_in_zone(offset: int = 0) -> str:
    return (dt.datetime.now(ZoneInfo(ZONE)).date() + dt.timedelta(days=offset)).isoformat()


# --- the browser side ---


def wait_for_screen(page: Page, screen: str) -> None:
    """Until ``screen`` shows and every answer it asked for is on it."""
    page.locator(f'html[data-state="ready"][data-screen="{screen}"]').wait_for(state="attached")


def settle(page: Page, action: Callable[[], Any]) -> None:
    """Run ``action`` (a click, a choice) and wait until the view it caused is complete."""
    before = page.locator("html").get_attribute("data-renders")
    action()
    page.locator(f'html[data-state="ready"]:not([data-renders="{before}"])').wait_for(
        state="attached"
    )


@dataclasses.dataclass
class Dashboard:
    """One browser context on the dashboard, driven from trio, and its console errors."""

    chromium: Chromium
    server: RunningServer
    context: BrowserContext
    page: Page
    errors: list[str] = dataclasses.field(default_factory=list)

    def listen(self) -> None:
        self.context.add_init_script(REPORT_CSP_VIOLATIONS)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    async def do(self, action: Callable[[Page], T]) -> T:
        return await self.chromium.call(action, self.page)

    async def evaluate(self, script: str, argument: Any = None) -> Any:
        return await self.do(lambda page: page.evaluate(script, argument))

    async def settle(self, action: Callable[[Page], Any]) -> None:
        await self.do(lambda page: settle(page, lambda: action(page)))

    async def reload(self, screen: str = DASHBOARD) -> None:
        def reload(page: Page) -> None:
            page.reload()
            wait_for_screen(page, screen)

        await self.do(reload)

    async def query(self) -> dict[str, str]:
        """The page URL's parameters."""
        url = await self.do(lambda page: page.url)
        return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}

    def finish(self, screenshot: Path) -> None:
        try:
            self.page.screenshot(path=screenshot, full_page=True)
        finally:
            self.context.close()


OpenDashboard = Callable[..., Awaitable[Dashboard]]


@pytest.fixture
async def open_dashboard(
    chromium: Chromium, request: pytest.FixtureRequest
) -> AsyncIterator[OpenDashboard]:
    """``await open_dashboard(server, "?site=…")`` opens the dashboard in a new context;
    ``login`` logs in first (with the admin password), ``clock`` lets the test move time."""
    opened: list[Dashboard] = []

    async def open_(
        server: RunningServer,
        query: str = "",
        *,
        screen: str = DASHBOARD,
        login: bool = True,
        clock: bool = False,
        viewport: tuple[int, int] = (1280, 900),
    ) -> Dashboard:
        def start() -> Dashboard:
            context = chromium.browser.new_context(
                locale="en-US",
                timezone_id="UTC",
                user_agent=BROWSER_UA,
                viewport={"width": viewport[0], "height": viewport[1]},
            )
            context.set_default_timeout(20_000)
            dashboard = Dashboard(chromium, server, context, context.new_page())
            dashboard.listen()
            if login:  # the context's request client shares the browser's cookies
                answer = context.request.post(
                    f"{server.url}/api/auth/login", data={"password": PASSWORD}
                )
                assert answer.ok, answer.text()
            if clock:
                dashboard.page.clock.install()
            dashboard.page.goto(f"{server.url}/{query}")
            wait_for_screen(dashboard.page, screen)
            return dashboard

        dashboard = await chromium.call(start)
        opened.append(dashboard)
        return dashboard

    yield open_
    for index, dashboard in enumerate(opened):
        suffix = f"-{index + 1}" if index else ""
        await chromium.call(dashboard.finish, screenshot_path(request.node.name + suffix))


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sixty days of generated traffic, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("traffic")
    generate(root, events=12_000, days=60, sites=[SITE, "other.example"], seed=5)
    return root


@pytest.fixture
async def api() -> AsyncIterator[Callable[[RunningServer], Awaitable[httpx.AsyncClient]]]:
    """``await api(server)``: an HTTP client logged in as admin, to ask the API directly."""
    made: list[httpx.AsyncClient] = []

    async def make(server: RunningServer) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=server.url, timeout=30)
        made.append(client)
        return await log_in(client)

    yield make
    for client in made:
        await client.aclose()


async def ask(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await client.get(path, params={"timezone": ZONE, **params})
    assert response.status_code == 200, response.text
    return response.json()


async def traffic_server(start_server: Any, traffic: Path) -> RunningServer:
    return await start_server(
        data_dir=traffic, sites=SITES, admin_password=PASSWORD, compaction_interval=0
    )


async def assert_view(
    dashboard: Dashboard, client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    """The cards, the chart and the breakdowns show the API's answers for ``params``."""
    main = await ask(client, "/api/stats/main", **params)
    assert await dashboard.evaluate(CARDS) == expected_cards(main)
    series = await ask(client, "/api/stats/timeseries", **params, metrics="visitors")
    chart = await dashboard.evaluate(CHART)
    assert chart["points"] == chart["commands"] == len(series["results"])
    assert [row[:2] for row in chart["rows"]] == [
        [row["dimensions"][0], shown("visitors", row["metrics"][0])] for row in series["results"]
    ]
    filters = json.loads(params.get("filters", "[]"))
    breakdowns = {
        "pages": ("pages", {}),
        "sources": ("sources", {}),
        "devices": ("devices", {}),
        "locations": ("countries", {}),
        "goals": (
            "events",
            {
                "metrics": "visitors,events,conversion_rate,total_revenue",
                "filters": json.dumps([*filters, GOALS_FILTER]),
            },
        ),
    }
    for panel, (name, extra) in breakdowns.items():
        answer = await ask(
            client, f"/api/stats/breakdown/{name}", **{**params, "limit": 10, **extra}
        )
        assert await dashboard.evaluate(ROWS, panel) == expected_rows(answer), panel


# --- the tests ---


def test_the_shell_has_no_inline_script_or_style() -> None:
    """The CSP allows neither: the page is the shell, its modules and its style sheet."""
    assert {"app.js", "api.js", "state.js", "chart.js", "dashboard.css"} <= set(DASHBOARD_ASSETS)
    assert re.findall(rb"<script[^>]*>", INDEX.plain) == [
        b'<script type="module" src="/assets/app.js">'
    ]
    assert not re.search(rb"\sstyle=|<style", INDEX.plain)
    for name, asset in DASHBOARD_ASSETS.items():
        assert not re.search(rb"innerHTML|setAttribute\(\"style|eval\(", asset.plain), name


async def test_assets_route(start_server: Any) -> None:
    server = await start_server()
    page = await server.client.get(f"{server.url}/", headers={"Accept-Encoding": "identity"})
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.content == INDEX.plain
    module = await server.client.get(f"{server.url}/assets/app.js")
    assert module.headers["content-type"] == "text/javascript; charset=utf-8"
    assert module.headers["content-encoding"] == "gzip"
    again = await server.client.get(
        f"{server.url}/assets/app.js", headers={"If-None-Match": module.headers["etag"]}
    )
    assert again.status_code == 304
    missing = await server.client.get(f"{server.url}/assets/nothing.js")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no dashboard asset 'nothing.js'"}


async def test_cards_chart_and_breakdowns_show_the_api_numbers(
    start_server: Any, traffic: Path, open_dashboard: OpenDashboard, api: Any
) -> None:
    server = await traffic_server(start_server, traffic)
    client = await api(server)
    dashboard = await open_dashboard(server, f"?site={SITE}")
    ready = await dashboard.evaluate("performance.getEntriesByName('mallard:ready')[0].startTime")
    print(f"dashboard complete {ready:.0f} ms after navigation start")  # reported, not asserted
    await assert_view(dashboard, client, {"site_id": SITE, "period": "30d"})
    sites = await ask(client, "/api/sites")
    options = await dashboard.evaluate(
        "[...document.querySelectorAll('#site option')].map((option) => option.value)"
    )
    assert options == [site["site_id"] for site in sites["sites"]]
    export = await dashboard.evaluate("document.querySelector('#export').href")
    csv = await client.get(export)  # the raw events of the view
    assert csv.status_code == 200
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.startswith("site_id,visitor_id,timestamp,event_name,")
    export = await dashboard.evaluate(
        "document.querySelector('#panel-locations .export-link').href"
    )
    csv = await client.get(export)  # the panel's table
    countries = await ask(client, "/api/stats/breakdown/countries", site_id=SITE, period="30d")
    lines = csv.text.splitlines()
    assert lines[0] == "visit:country,visitors,percentage"
    assert len(lines) - 1 == countries["meta"]["total_rows"]
    country, *numbers = lines[1].split(",")
    [first, *_] = countries["results"]
    assert [country, *map(float, numbers)] == first["dimensions"] + first["metrics"]
    assert dashboard.errors == []


async def test_clicking_a_row_filters_and_the_url_round_trips(
    start_server: Any, traffic: Path, open_dashboard: OpenDashboard, api: Any
) -> None:
    server = await traffic_server(start_server, traffic)
    client = await api(server)
    dashboard = await open_dashboard(server, f"?site={SITE}&period=30d")
    [[country, *_], *_] = await dashboard.evaluate(ROWS, "locations")

    def choose_with_the_keyboard(page: Page) -> None:
        page.focus(f'#panel-locations .row-button[data-value="{country}"]')
        page.keyboard.press("Enter")

    await dashboard.settle(choose_with_the_keyboard)
    query = await dashboard.query()
    assert json.loads(query["filters"]) == [["is", "visit:country", [country]]]
    params = {"site_id": SITE, "period": "30d", "filters": query["filters"]}
    await assert_view(dashboard, client, params)
    unfiltered = await ask(client, "/api/stats/main", site_id=SITE, period="30d")
    assert await dashboard.evaluate(CARDS) != expected_cards(unfiltered)

    await dashboard.reload()  # the URL alone restores the view
    await assert_view(dashboard, client, params)
    chip = await dashboard.evaluate("document.querySelector('#filters .chip').textContent")
    assert chip.startswith("Country is ")

    await dashboard.settle(lambda page: page.click("#filters .chip"))
    assert "filters" not in await dashboard.query()
    assert await dashboard.evaluate(CARDS) == expected_cards(unfiltered)
    await dashboard.settle(lambda page: page.go_back())  # the filter again, from history
    assert json.loads((await dashboard.query())["filters"]) == [["is", "visit:country", [country]]]
    await assert_view(dashboard, client, params)
    assert dashboard.errors == []


async def test_period_compare_metric_and_custom_range(
    start_server: Any, traffic: Path, open_dashboard: OpenDashboard, api: Any
) -> None:
    server = await traffic_server(start_server, traffic)
    client = await api(server)
    dashboard = await open_dashboard(server, f"?site={SITE}")

    await dashboard.settle(lambda page: page.select_option("#period", "7d"))
    assert (await dashboard.query())["period"] == "7d"
    await assert_view(dashboard, client, {"site_id": SITE, "period": "7d"})

    await dashboard.settle(lambda page: page.select_option("#compare", "previous_period"))
    assert (await dashboard.query())["compare"] == "previous_period"
    compared = {"site_id": SITE, "period": "7d", "compare": "previous_period"}
    main = await ask(client, "/api/stats/main", **compared)
    assert await dashboard.evaluate(CARDS) == expected_cards(main)
    assert all(change is not None for _, change in expected_cards(main).values())

    await dashboard.settle(lambda page: page.click('.card[data-metric="pageviews"]'))
    assert (await dashboard.query())["metric"] == "pageviews"
    series = await ask(client, "/api/stats/timeseries", **compared, metrics="pageviews")
    chart = await dashboard.evaluate(CHART)
    assert chart["title"] == "Total pageviews"
    assert chart["previous"] == chart["points"] == len(series["results"])
    assert [[row[0], row[1], row[3]] for row in chart["rows"]] == [
        [
            row["dimensions"][0],
            shown("pageviews", row["metrics"][0]),
            shown("pageviews", row["comparison"]["metrics"][0]),
        ]
        for row in series["results"]
    ]

    await dashboard.settle(lambda page: page.select_option("#period", "yesterday"))
    yesterday = {"site_id": SITE, "period": "day", "date": day_in_zone(-1)}
    main = await ask(client, "/api/stats/main", **yesterday, compare="previous_period")
    assert await dashboard.evaluate(CARDS) == expected_cards(main)
    assert len((await dashboard.evaluate(CHART))["rows"]) == 24  # hours

    first, last = day_in_zone(-20), day_in_zone(-10)

    def custom_range(page: Page) -> None:
        page.select_option("#period", "custom")
        page.fill("#range-from", first)
        page.fill("#range-to", last)
        settle(page, lambda: page.click("#custom-range button[type=submit]"))

    await dashboard.do(custom_range)
    query = await dashboard.query()
    assert (query["period"], query["from"], query["to"]) == ("custom", first, last)
    custom = {"site_id": SITE, "period": "custom", "date": f"{first},{last}"}
    main = await ask(client, "/api/stats/main", **custom, compare="previous_period")
    assert await dashboard.evaluate(CARDS) == expected_cards(main)
    assert len((await dashboard.evaluate(CHART))["rows"]) == 11  # days

    await dashboard.reload()
    assert await dashboard.evaluate(CARDS) == expected_cards(main)
    assert dashboard.errors == []


async def test_funnel_retention_and_flow_show_the_api_answers(
    start_server: Any, traffic: Path, open_dashboard: OpenDashboard, api: Any
) -> None:
    server = await traffic_server(start_server, traffic)
    client = await api(server)
    steps = "page:/pricing,page:/signup,page:/checkout"
    dashboard = await open_dashboard(server, f"?site={SITE}&funnel={steps}")
    base = {"site_id": SITE, "period": "30d"}

    async def assert_funnel(steps: str) -> None:
        answer = await ask(client, "/api/stats/funnel", **base, steps=steps, window=86400)
        assert len(answer["steps"]) == len(steps.split(","))
        expected = [
            [
                f"{'Page' if step['name'].startswith('page:') else 'Event'} "
                f"{step['name'].split(':', 1)[1]}",
                f"{shown('visitors', step['visitors'])} visitors",
                f"{shown('conversion_rate', step['conversion_rate'])} of step 1",
                f"{shown('visitors', step['dropoff'])} dropped off" if i else None,
            ]
            for i, step in enumerate(answer["steps"])
        ]
        assert await dashboard.evaluate(FUNNEL) == expected

    await assert_funnel(steps)

    def add_purchase_step(page: Page) -> None:
        page.get_by_role("button", name="Add a step").click()
        page.locator(".step-kind").last.select_option("event")
        page.locator(".step-value").last.fill("purchase")
        settle(page, lambda: page.get_by_role("button", name="Show the funnel").click())

    await dashboard.do(add_purchase_step)
    assert (await dashboard.query())["funnel"] == f"{steps},event:purchase"
    await assert_funnel(f"{steps},event:purchase")

    def next_tab_with_the_keyboard(page: Page) -> None:
        page.get_by_role("tab", name="Funnel").focus()
        page.keyboard.press("ArrowRight")

    await dashboard.settle(next_tab_with_the_keyboard)
    selected = "document.querySelector('#behaviour [aria-selected=true]').textContent"
    assert await dashboard.evaluate(selected) == "Retention"
    assert (await dashboard.query())["behaviour"] == "retention"
    cohorts = (await ask(client, "/api/stats/retention", **base, interval="week"))["cohorts"]
    assert cohorts
    assert await dashboard.evaluate(RETENTION) == [
        [
            cohort["cohort"],
            shown("visitors", cohort["visitors"]),
            *(shown("percentage", period["percentage"]) for period in cohort["periods"]),
            *[""] * (max(len(c["periods"]) for c in cohorts) - len(cohort["periods"])),
        ]
        for cohort in cohorts
    ]

    async def assert_flow(page: str) -> None:
        answer = await ask(client, "/api/stats/flow", **base, page=page)
        assert answer["next"]
        assert await dashboard.evaluate(FLOW) == {
            direction: [[row["page"], shown("views", row["views"])] for row in answer[direction]]
            for direction in ("previous", "next")
        }

    await dashboard.settle(lambda page: page.get_by_role("tab", name="Page flow").click())
    top = await ask(client, "/api/stats/breakdown/pages", **base, limit=1, metrics="visitors")
    await assert_flow(top["results"][0]["dimensions"][0])  # the top page, unless one is chosen
    flow = await dashboard.evaluate(FLOW)
    following = next(page for page, _ in flow["next"] if not page.startswith("("))
    await dashboard.settle(
        lambda page: page.click(f'.flow-next li[data-page="{following}"] button')
    )
    assert (await dashboard.query())["flow"] == following
    await assert_flow(following)
    assert dashboard.errors == []


async def test_fits_a_phone_screen(
    start_server: Any, traffic: Path, open_dashboard: OpenDashboard, api: Any
) -> None:
    server = await traffic_server(start_server, traffic)
    client = await api(server)
    dashboard = await open_dashboard(server, f"?site={SITE}", viewport=(390, 844))
    widths = "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    assert await dashboard.evaluate(widths) == [390, 390]  # nothing wider than the screen
    main = await ask(client, "/api/stats/main", site_id=SITE, period="30d")
    assert await dashboard.evaluate(CARDS) == expected_cards(main)
    columns = "getComputedStyle(document.querySelector('#cards')).gridTemplateColumns"
    assert len((await dashboard.evaluate(columns)).split()) == 2  # two cards a row
    assert dashboard.errors == []


async def test_realtime_visitors_refresh_by_themselves(
    start_server: Any, tmp_path: Path, open_dashboard: OpenDashboard, api: Any
) -> None:
    # Traffic that ended two days ago: nobody is on the site until the test's visitor.
    end = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=2)
    generate(tmp_path / "quiet", events=1_000, days=7, sites=[SITE], end=end, seed=4)
    server = await start_server(
        data_dir=tmp_path / "quiet", admin_password=PASSWORD, sites=SITES, compaction_interval=0
    )
    client = await api(server)
    dashboard = await open_dashboard(server, f"?site={SITE}", clock=True)
    count = "document.querySelector('#realtime-count').textContent"
    assert await dashboard.evaluate(count) == "0"
    visitor = {"User-Agent": BROWSER_UA, "X-Forwarded-For": "203.0.113.77"}
    event = {"d": SITE, "n": "pageview", "u": f"https://{SITE}/pricing"}
    assert (await server.post_event(event, headers=visitor)).status_code == 202
    assert (await ask(client, "/api/stats/realtime", site_id=SITE)) == {"visitors": 1}
    assert await dashboard.evaluate(count) == "0"  # not asked again yet
    await dashboard.do(lambda page: page.clock.run_for(31_000))  # the 30-second refresh
    await dashboard.do(lambda page: expect(page.locator("#realtime-count")).to_have_text("1"))
    assert await dashboard.evaluate("document.querySelector('#realtime-label').textContent") == (
        "current visitor"
    )
    assert dashboard.errors == []


async def test_login_is_required_when_a_password_is_set(
    start_server: Any, tmp_path: Path, open_dashboard: OpenDashboard, api: Any
) -> None:
    generate(tmp_path / "locked", events=2_000, days=7, sites=[SITE], seed=9)
    server = await start_server(
        data_dir=tmp_path / "locked", admin_password=PASSWORD, sites=SITES, compaction_interval=0
    )
    refused = await server.client.get(f"{server.url}/api/stats/main", params={"site_id": SITE})
    assert refused.status_code == 401
    dashboard = await open_dashboard(server, screen="login-screen", login=False)

    await dashboard.do(lambda page: page.fill("#login-password", "not the password"))
    await dashboard.do(lambda page: page.click("#login-form button[type=submit]"))
    await dashboard.do(
        lambda page: expect(page.locator("#login-error")).to_have_text("wrong username or password")
    )
    [refused_login] = dashboard.errors  # the browser reports the refused login
    assert refused_login.startswith(REFUSED)
    dashboard.errors.clear()

    def log_in_with_the_form(page: Page) -> None:
        page.fill("#login-password", PASSWORD)
        page.click("#login-form button[type=submit]")
        wait_for_screen(page, DASHBOARD)

    await dashboard.do(log_in_with_the_form)
    client = await api(server)
    main = await ask(client, "/api/stats/main", site_id=SITE, period="30d")
    assert await dashboard.evaluate(CARDS) == expected_cards(main)
    assert await dashboard.evaluate("document.querySelector('#account-name').textContent") == (
        "admin"
    )
    await dashboard.reload()  # the session cookie keeps the browser logged in

    def log_out(page: Page) -> None:
        page.click("#logout")
        wait_for_screen(page, "login-screen")

    await dashboard.do(log_out)
    assert dashboard.errors == []

    # A shared link: one site's dashboard, read-only, for people without an account.
    response = await client.post("/api/shared-links", json={"site_id": SITE})
    token = response.json()["token"]
    shared = await open_dashboard(server, f"?auth={token}", login=False)
    assert await shared.evaluate(
        "[...document.querySelectorAll('#site option')].map((option) => option.value)"
    ) == [SITE]
    main = await ask(
        client, "/api/stats/main", site_id=SITE, period="30d"
    )  # the same numbers the link shows
    assert await shared.evaluate(CARDS) == expected_cards(main)
    hidden = "['#export', '#account'].map((selector) => document.querySelector(selector).hidden)"
    assert await shared.evaluate(hidden) == [True, True]
    assert (await shared.query())["auth"] == token  # kept in the URL, for a reload
    assert shared.errors == []

    # A shared link with a password asks for it first.
    body = {"site_id": SITE, "name": "board", "password": "the link's password"}
    token = (await client.post("/api/shared-links", json=body)).json()["token"]
    locked = await open_dashboard(server, f"?auth={token}", screen="unlock-screen", login=False)
    [refused_link] = locked.errors  # the status answer: 401, password required
    assert refused_link.startswith(REFUSED)
    locked.errors.clear()

    def unlock(page: Page) -> None:
        page.fill("#unlock-password", body["password"])
        page.click("#unlock-form button[type=submit]")
        wait_for_screen(page, DASHBOARD)

    await locked.do(unlock)
    assert await locked.evaluate(CARDS) == expected_cards(main)
    assert locked.errors == []


async def test_first_run_setup_from_this_machine(
    start_server: Any, open_dashboard: OpenDashboard
) -> None:
    server = await start_server(sites=SITES)  # no password, no data
    dashboard = await open_dashboard(server, screen="setup-screen", login=False)

    def choose(page: Page, password: str, repeated: str) -> None:
        page.fill("#setup-password", password)
        page.fill("#setup-repeat", repeated)
        page.click("#setup-form button[type=submit]")

    await dashboard.do(lambda page: choose(page, PASSWORD, "something else"))
    error = "document.querySelector('#setup-error').textContent"
    assert await dashboard.evaluate(error) == "The two passwords differ."

    def set_password(page: Page) -> None:
        choose(page, PASSWORD, PASSWORD)
        wait_for_screen(page, DASHBOARD)

    await dashboard.do(set_password)
    status = (await server.client.get(f"{server.url}/api/auth/status")).json()
    assert status["setup_required"] is False
    # The configured site has no data yet: the snippet to paste, with this server's origin.
    snippet = await dashboard.evaluate("document.querySelector('#snippet').textContent")
    assert snippet == f'<script defer data-domain="{SITE}" src="{server.url}/mallard.js"></script>'
    await dashboard.settle(lambda page: page.select_option("#site", EMPTY_SITE))
    assert EMPTY_SITE in await dashboard.evaluate("document.querySelector('#snippet').textContent")
    await dashboard.reload()  # logged in by the setup
    assert dashboard.errors == []


async def test_setup_can_wait_on_this_machine(
    start_server: Any, tmp_path: Path, open_dashboard: OpenDashboard
) -> None:
    """Without a password, this machine may skip the setup and read the stats (per tab)."""
    generate(tmp_path / "open", events=1_000, days=3, sites=[SITE], seed=2)
    server = await start_server(data_dir=tmp_path / "open", compaction_interval=0)
    dashboard = await open_dashboard(server, screen="setup-screen", login=False)

    def skip(page: Page) -> None:
        page.click("#setup-skip")
        wait_for_screen(page, DASHBOARD)

    await dashboard.do(skip)
    main = (await server.client.get(f"{server.url}/api/stats/main?site_id={SITE}")).json()
    assert await dashboard.evaluate(CARDS) == expected_cards(main)
    await dashboard.reload()  # still skipped in this tab
    assert dashboard.errors == []


async def test_odd_values_and_hand_made_urls_leave_every_view_usable(
    start_server: Any, tmp_path: Path, open_dashboard: OpenDashboard
) -> None:
    """Values that reorder text, paths too long for a line, and URLs no form would make."""
    server = await start_server(data_dir=tmp_path / "odd", admin_password=PASSWORD, sites=SITES)
    disguised, long_path = "/\u202e/gnp.exe", "/" + "x" * 1500
    for page in (disguised, long_path):
        event = {"d": SITE, "n": "pageview", "u": f"https://{SITE}{page}"}
        assert (await server.post_event(event)).status_code == 202
    today = day_in_zone()
    dashboard = await open_dashboard(server, f"?site={SITE}&period=today&interval=month")

    pages = await dashboard.evaluate(
        "[...document.querySelectorAll('#panel-pages .row-button')].map((b) => b.textContent)"
    )
    assert "/[U+202E]/gnp.exe" in pages  # as it is, not as "/exe.png/"
    y_labels = "[...document.querySelectorAll('#chart .y-label')].map((t) => t.textContent)"
    assert await dashboard.evaluate(y_labels) == ["0", "1"]  # whole visitors: not 0, 0, 1, 1, 1
    first_of_month = dt.date.fromisoformat(today).replace(day=1)
    period = "[...document.querySelectorAll('#chart-table tbody th')].map((t) => t.textContent)"
    assert await dashboard.evaluate(period) == [first_of_month.strftime("%b %Y")]  # not a day

    def show_flow_of(path: str) -> Callable[[Page], None]:
        def show(page: Page) -> None:
            page.locator("#flow-page").fill(path)
            page.get_by_role("button", name="Show its flow").click()

        return show

    widths = "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    await dashboard.settle(lambda page: page.click(f'#panel-pages [data-value="{long_path}"]'))
    await dashboard.settle(lambda page: page.get_by_role("tab", name="Page flow").click())
    await dashboard.settle(show_flow_of(long_path))
    assert await dashboard.evaluate(widths) == [1280, 1280]  # the chip and the flow wrap

    await dashboard.settle(show_flow_of("p01"))  # no leading slash: the API says so
    assert "starting with /" in await dashboard.evaluate(
        "document.querySelector('#behaviour [role=alert], #behaviour .error').textContent"
    )
    await dashboard.settle(show_flow_of("/pricing"))  # the form is still there to fix it
    assert (await dashboard.query())["flow"] == "/pricing"

    hand_made = json.dumps([None, 1, ["is", "constructor", ["x"]]])
    await dashboard.do(lambda page: page.goto(f"{server.url}/?site={SITE}&filters={hand_made}"))
    await dashboard.do(lambda page: wait_for_screen(page, DASHBOARD))
    chips = "[...document.querySelectorAll('#filters .chip')].map((c) => c.textContent)"
    assert await dashboard.evaluate(chips) == ["constructor is x ✕"]

    week_ago = day_in_zone(-7)
    backwards = f"?site={SITE}&period=custom&from={today}&to={week_ago}"
    await dashboard.do(lambda page: page.goto(f"{server.url}/{backwards}"))
    await dashboard.do(lambda page: wait_for_screen(page, DASHBOARD))
    assert (await dashboard.evaluate(CARDS))["visitors"][0] == "1"
    refused = "Failed to load resource: the server responded with a status of 400"
    assert [error for error in dashboard.errors if not error.startswith(refused)] == []
