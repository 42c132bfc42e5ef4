"""The site list (``GET /api/sites``) and each site's default timezone."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from mallard.api.sites import site_list
from mallard.config import ConfigError, Settings, load_settings
from mallard.storage.layout import DataLayout
from mallard.storage.parquet import write_batch
from mallard.storage.schema import events_to_table
from tests.factories import DAY_US, make_event
from tests.test_auth_api import PASSWORD, clients, create_user, log_in  # noqa: F401

BERLIN = (("b.example", "Europe/Berlin"), ("c.example", "UTC"))
DAY = dt.date(1970, 1, 1) + dt.timedelta(days=20_000)


def test_configured_sites_first_then_sites_with_data() -> None:
    sites = site_list(Settings(sites=BERLIN), {"z.example", "a.example", "b.example"})
    assert [(s["site_id"], s["timezone"], s["has_data"]) for s in sites] == [
        ("b.example", "Europe/Berlin", True),
        ("c.example", "UTC", False),
        ("a.example", "UTC", True),
        ("z.example", "UTC", True),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("b.example=Europe/Berlin, c.example", BERLIN),
        ({"b.example": {"timezone": "Europe/Berlin"}, "c.example": {}}, BERLIN),
    ],
)
def test_sites_setting(value: Any, expected: Any, tmp_path: Any) -> None:
    if isinstance(value, str):
        assert load_settings(environ={"MALLARD_SITES": value}).sites == expected
    else:
        toml = tmp_path / "mallard.toml"
        toml.write_text(
            'sites = { "b.example" = { timezone = "Europe/Berlin" }, "c.example" = {} }\n'
        )
        assert load_settings(config_file=toml).sites == expected


@pytest.mark.parametrize("value", ["b.example=Mars/Olympus", "bad site=UTC", "b.example=1"])
def test_bad_sites_setting_names_it(value: str) -> None:
    with pytest.raises(ConfigError, match="MALLARD_SITES"):
        load_settings(environ={"MALLARD_SITES": value})


async def test_site_list_and_timezones(start_server: Any, tmp_path: Any) -> None:
    layout = DataLayout(tmp_path / "sites")
    layout.create()
    late = 20_000 * DAY_US + 23 * 3600 * 1_000_000 + 1  # 23:00 UTC: midnight in Berlin
    write_batch(
        events_to_table(
            [make_event(site_id=site, timestamp=late) for site in ("b.example", "a.example")]
        ),
        layout,
        "sites",
    )
    server = await start_server(data_dir=layout.root, sites=BERLIN)
    answer = (await server.client.get(f"{server.url}/api/sites")).json()
    assert [site["site_id"] for site in answer["sites"]] == ["b.example", "c.example", "a.example"]

    async def visitors(site: str, day: dt.date, **extra: str) -> int:
        params = {"site_id": site, "period": "day", "date": day.isoformat(), **extra}
        main = await server.client.get(f"{server.url}/api/stats/main", params=params)
        return main.json()["results"][0]["metrics"][0]

    next_day = DAY + dt.timedelta(days=1)
    assert (await visitors("b.example", DAY), await visitors("b.example", next_day)) == (0, 1)
    assert (await visitors("a.example", DAY), await visitors("a.example", next_day)) == (1, 0)
    assert await visitors("b.example", DAY, timezone="UTC") == 1  # a query may name its own


async def test_a_viewer_lists_only_their_sites(start_server: Any, clients: Any) -> None:  # noqa: F811
    server = await start_server(admin_password=PASSWORD, sites=BERLIN)
    admin = await log_in(clients(server))
    listed = (await admin.get("/api/sites")).json()["sites"]
    assert [site["site_id"] for site in listed] == ["b.example", "c.example"]
    await create_user(admin, "vera", password=PASSWORD, roles={"c.example": "viewer"})
    vera = await log_in(clients(server), "vera")
    assert (await vera.get("/api/sites")).json()["sites"] == [
        {"site_id": "c.example", "timezone": "UTC", "has_data": False}
    ]
    assert (await clients(server).get("/api/sites")).status_code == 401


async def test_a_site_has_data_from_its_first_accepted_event(start_server: Any) -> None:
    """Read-your-writes for the site list too: no "waiting for the first event" until a flush."""
    server = await start_server(sites=BERLIN, flush_interval=3600, flush_count=10_000)

    async def listed() -> list[tuple[str, bool]]:
        answer = (await server.client.get(f"{server.url}/api/sites")).json()
        return [(site["site_id"], site["has_data"]) for site in answer["sites"]]

    assert await listed() == [("b.example", False), ("c.example", False)]
    for site in ("c.example", "new.example"):
        event = {"d": site, "n": "pageview", "u": f"https://{site}/"}
        assert (await server.post_event(event)).status_code == 202
    bulk = [{"d": "bulk.example", "n": "pageview", "u": "https://bulk.example/"}] * 1000
    for _ in range(2):  # past the events held as tuples: some are in an Arrow table
        answer = await server.client.post(f"{server.url}/api/events", json=bulk)
        assert answer.status_code == 202, answer.text
    assert not any(DataLayout(server.data_dir).events.rglob("*.parquet"))  # not flushed yet
    assert await listed() == [
        ("b.example", False),
        ("c.example", True),
        ("bulk.example", True),
        ("new.example", True),
    ]
