"""What lands on disk: the Parquet layout, its schema, and no IP address anywhere."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import duckdb
import pyarrow.parquet as pq

from mallard.storage.layout import DataLayout
from mallard.storage.schema import EVENT_SCHEMA
from tests.conftest import BROWSER_UA, SEED_EVENT, parquet_files

INTERFACE_COLUMNS = [
    "site_id", "visitor_id", "timestamp", "event_name", "pathname", "hostname", "referrer",
    "referrer_source", "utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term",
    "browser", "browser_version", "os", "os_version", "device_type", "screen_width",
    "country_code", "props", "revenue_amount", "revenue_currency",
]  # fmt: skip
FILE_NAME = re.compile(r"site_id=(?P<site>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/[^/]+\.parquet$")


async def test_parquet_layout_schema_and_compression(server: Any) -> None:
    sites = ["example.com", "blog.example.org", "app_1:8080"]
    for site in sites:
        body = {**SEED_EVENT, "d": site, "p": {"plan": "pro"}, "ra": 12.5, "rc": "EUR"}
        assert (await server.post_event(body)).status_code == 202
    await server.stop()

    files = parquet_files(server.data_dir)
    assert len(files) == 3
    seen_sites = set()
    for path in files:
        match = FILE_NAME.search(path.as_posix())
        assert match, path
        seen_sites.add(match["site"])
        parquet = pq.ParquetFile(path)
        assert parquet.schema_arrow == EVENT_SCHEMA
        columns = parquet.metadata.row_group(0)
        assert {columns.column(i).compression for i in range(columns.num_columns)} == {"ZSTD"}
    assert seen_sites == set(sites)
    assert not list(DataLayout(server.data_dir).tmp.iterdir())  # nothing left aside

    glob = DataLayout(server.data_dir).events_glob
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)")
    assert set(INTERFACE_COLUMNS) <= set(relation.columns)
    types = dict(zip(relation.columns, relation.types, strict=True))
    assert str(types["revenue_amount"]) == "DECIMAL(12,2)"
    assert str(types["visitor_id"]) == "BIGINT"
    assert str(types["timestamp"]) == "TIMESTAMP WITH TIME ZONE"
    assert str(types["site_id"]) == "VARCHAR"
    plans = duckdb.sql(
        f"SELECT DISTINCT json_extract_string(props, '$.plan'), date = timestamp::DATE "
        f"FROM read_parquet('{glob}', hive_partitioning = true)"
    ).fetchall()
    assert plans == [("pro", True)]


async def test_visitor_ids_follow_ip_and_user_agent(server: Any) -> None:
    async def send(ip: str, user_agent: str = BROWSER_UA) -> None:
        headers = {"User-Agent": user_agent, "X-Forwarded-For": f"{ip}, 10.0.0.1"}
        assert (await server.post_event(SEED_EVENT, headers=headers)).status_code == 202

    await send("198.51.100.1")
    await send("198.51.100.1")
    await send("198.51.100.2")
    await send("198.51.100.1", BROWSER_UA.replace("124", "125"))
    await server.stop()
    ids = [event["visitor_id"] for event in server.events()]
    assert ids[0] == ids[1]
    assert len(set(ids)) == 3


async def test_untrusted_peer_cannot_choose_its_ip(start_server: Any) -> None:
    server = await start_server(trusted_proxies=())
    for forwarded in ("198.51.100.1", "198.51.100.2"):
        headers = {"User-Agent": BROWSER_UA, "X-Forwarded-For": forwarded}
        await server.post_event(SEED_EVENT, headers=headers)
    await server.stop()
    ids = {event["visitor_id"] for event in server.events()}
    assert len(ids) == 1  # both came from the same TCP peer


async def test_country_from_the_client_ip(server: Any) -> None:
    headers = {"User-Agent": BROWSER_UA, "X-Forwarded-For": "81.2.69.142"}  # a UK address
    await server.post_event(SEED_EVENT, headers=headers)
    await server.stop()
    [stored] = server.events()
    assert stored["country_code"] == "GB"


async def test_the_ip_address_is_written_nowhere(server: Any, caplog: Any) -> None:
    ips = ["203.0.113.77", "2001:db8:cafe::17"]
    for ip in ips:
        for real_ip_header in ("X-Forwarded-For", "X-Real-IP"):
            headers = {"User-Agent": BROWSER_UA, real_ip_header: ip}
            body = {**SEED_EVENT, "p": json.dumps({"note": "hello"})}
            assert (await server.post_event(body, headers=headers)).status_code == 202
    await server.stop()
    assert len(server.events()) == 4

    needles = []
    for ip in ips:
        address = ipaddress.ip_address(ip)
        needles += [ip.encode(), address.packed, address.exploded.encode()]
    needles.append(b"127.0.0.1")  # the TCP peer itself
    files = [path for path in server.data_dir.rglob("*") if path.is_file()]
    assert files
    for path in files:
        content = path.read_bytes()
        for needle in needles:
            assert needle not in content, f"{needle!r} found in {path}"
    for ip in ips:
        assert ip not in caplog.text


async def test_a_maxmind_database_gives_region_and_city(start_server: Any, tmp_path: Any) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    database = tmp_path / "tiny-city.mmdb"
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    writer.insert_network(
        IPSet(["203.0.113.0/24"]),
        {
            "country": {"iso_code": "NZ"},
            "subdivisions": [{"names": {"en": "Auckland"}}],
            "city": {"names": {"en": "Auckland"}},
        },
    )
    writer.to_db_file(str(database))
    server = await start_server(geoip_db=database)
    for ip in ("203.0.113.9", "198.51.100.1"):  # inside and outside the database
        headers = {"User-Agent": BROWSER_UA, "X-Forwarded-For": ip}
        assert (await server.post_event(SEED_EVENT, headers=headers)).status_code == 202
    await server.stop()
    located = [(e["country_code"], e["region"], e["city"]) for e in server.events()]
    assert located == [("NZ", "Auckland", "Auckland"), (None, None, None)]
