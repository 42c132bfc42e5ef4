"""``/api/event`` against a real hypercorn server: every row of the seed, and more."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import trio

from mallard.api.ingest import IngestEndpoint
from mallard.ingest.pipeline import Ingestor
from tests.conftest import BROWSER_UA, SEED_EVENT, RunningServer
from tests.factories import SEED_EXAMPLE

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def event(**fields: Any) -> dict[str, Any]:
    return {**SEED_EVENT, **fields}


async def test_seed_example_is_accepted_and_stored(server: RunningServer) -> None:
    body = SEED_EXAMPLE
    response = await server.post_event(body)
    assert response.status_code == 202
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == "*"
    await server.stop()
    [stored] = server.events()
    assert stored["site_id"] == "example.com"
    assert stored["event_name"] == "pageview"
    assert stored["pathname"] == "/pricing"
    assert stored["hostname"] == "example.com"
    assert stored["referrer"] == "https://google.com/"
    assert stored["referrer_source"] == "Google"
    assert stored["screen_width"] == 1920
    assert stored["device_type"] == "Desktop"
    assert stored["browser"] == "Chrome"
    assert stored["os"] == "Windows"
    assert json.loads(stored["props"]) == {"plan": "pro"}
    assert str(stored["revenue_amount"]) == "99.00"
    assert stored["revenue_currency"] == "USD"


async def test_seed_server_side_curl_example_is_stored(server: RunningServer) -> None:
    body = {"d": "example.com", "n": "server_signup", "u": "https://example.com/signup"}
    response = await server.post_event(
        body, headers={"User-Agent": "curl/8.5.0", "Content-Type": "application/json"}
    )
    assert response.status_code == 202
    await server.stop()
    assert [e["event_name"] for e in server.events()] == ["server_signup"]


BAD_REQUESTS = [
    # (description, raw body, expected status)
    ("missing d", {"n": "pageview", "u": "https://example.com/"}, 422),
    ("missing n", {"d": "example.com", "u": "https://example.com/"}, 422),
    ("missing u", {"d": "example.com", "n": "pageview"}, 422),
    ("null u", event(u=None), 422),
    ("empty d", event(d=""), 400),
    ("empty n", event(n=""), 400),
    ("empty u", event(u=""), 400),
    ("d with a slash", event(d="example.com/x"), 400),
    ("d with a space", event(d="exa mple.com"), 400),
    ("d over 256", event(d="a" * 257), 400),
    ("n over 256", event(n="n" * 257), 400),
    ("u over 2048", event(u="https://example.com/" + "x" * 2048), 400),
    ("r over 2048", event(r="https://google.com/" + "x" * 2048), 400),
    ("p over 4096", event(p=json.dumps({"k": "v" * 4100})), 400),
    ("w a word", event(w="wide"), 400),
    ("w negative", event(w=-1), 400),
    ("w absurd", event(w=10**9), 400),
    ("d a number", event(d=42), 400),
    ("ra a string", event(ra="ten", rc="USD"), 400),
    ("rc too long", event(ra=1, rc="EURO"), 400),
    ("rc not ISO 4217", event(ra=1, rc="ZZZ"), 400),
    ("p not JSON", event(p="{plan: pro}"), 400),
    ("p a JSON list", event(p="[1, 2]"), 400),
    ("u not a URL", event(u="pricing"), 400),
]


@pytest.mark.parametrize(
    ("body", "status"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
async def test_invalid_events_get_precise_4xx(
    server: RunningServer, body: dict[str, Any], status: int
) -> None:
    response = await server.post_event(body)
    assert response.status_code == status
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.json()["error"]


RAW_BODIES = [
    ("invalid JSON", b'{"d": "example.com",', 400),
    ("a JSON array", b'[{"d": "example.com"}]', 400),
    ("a JSON scalar", b'"pageview"', 400),
    ("non-UTF-8 bytes", b'{"d": "ex\xff\xfe.com", "n": "x", "u": "https://e.com/"}', 400),
    ("NaN", b'{"d": "e.com", "n": "x", "u": "https://e.com/", "w": NaN}', 400),
    ("Infinity", b'{"d": "e.com", "n": "x", "u": "https://e.com/", "ra": Infinity}', 400),
    ("empty body", b"", 400),
]


@pytest.mark.parametrize(
    ("body", "status"), [c[1:] for c in RAW_BODIES], ids=[c[0] for c in RAW_BODIES]
)
async def test_malformed_bodies_get_400(server: RunningServer, body: bytes, status: int) -> None:
    response = await server.post_event(content=body)
    assert response.status_code == status
    assert "error" in response.json()


async def test_nothing_is_stored_for_bad_requests(server: RunningServer) -> None:
    for _, body, _ in BAD_REQUESTS:
        await server.post_event(body)
    for _, raw, _ in RAW_BODIES:
        await server.post_event(content=raw)
    assert (await server.post_event(SEED_EVENT)).status_code == 202  # still serving
    await server.stop()
    assert len(server.events()) == 1


async def test_body_over_64_kb_is_413(server: RunningServer) -> None:
    padding = "x" * (64 * 1024)
    response = await server.post_event(content=json.dumps(event(pad=padding)).encode())
    assert response.status_code == 413

    async def chunks() -> Any:  # no Content-Length: the limit holds while reading
        for _ in range(70):
            yield b" " * 1024

    response = await server.client.post(f"{server.url}/api/event", content=chunks())
    assert response.status_code == 413


async def test_body_of_exactly_64_kb_is_accepted(server: RunningServer) -> None:
    base = json.dumps(event(pad="")).encode()
    body = json.dumps(event(pad="x" * (64 * 1024 - len(base)))).encode()
    assert len(body) == 64 * 1024
    assert (await server.post_event(content=body)).status_code == 202


async def test_json_accepted_whatever_the_content_type(server: RunningServer) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"User-Agent": BROWSER_UA}
        if content_type:
            headers["Content-Type"] = content_type
        response = await server.post_event(content=json.dumps(SEED_EVENT), headers=headers)
        assert response.status_code == 202, content_type


async def test_plausible_tracker_body(server: RunningServer) -> None:
    """What Plausible's script sends: props as an object, revenue object, extra fields."""
    body = {
        "n": "Purchase",
        "u": "https://example.com/checkout?utm_source=newsletter",
        "d": "example.com",
        "r": None,
        "w": 390,
        "h": 0,
        "p": {"plan": "pro", "seats": 3},
        "revenue": {"amount": "12.50", "currency": "EUR"},
        "i": True,
    }
    response = await server.post_event(
        content=json.dumps(body), headers={"User-Agent": BROWSER_UA, "Content-Type": "text/plain"}
    )
    assert response.status_code == 202
    await server.stop()
    [stored] = server.events()
    assert json.loads(stored["props"]) == {"plan": "pro", "seats": 3}
    assert (str(stored["revenue_amount"]), stored["revenue_currency"]) == ("12.50", "EUR")
    assert stored["utm_source"] == "newsletter"
    assert stored["device_type"] == "Mobile"


async def test_pixel_endpoint(server: RunningServer) -> None:
    response = await server.client.get(
        f"{server.url}/api/event",
        params={"d": "example.com", "u": "https://example.com/newsletter", "w": "1280"},
        headers={"User-Agent": BROWSER_UA},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.headers["content-length"] == "43"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.content[:6] == b"GIF89a" and len(response.content) == 43
    missing = await server.client.get(f"{server.url}/api/event", params={"d": "example.com"})
    assert missing.status_code == 422
    checked = await server.client.head(  # a link checker: the pixel's headers, no pageview
        f"{server.url}/api/event",
        params={"d": "example.com", "u": "https://example.com/checked"},
        headers={"User-Agent": BROWSER_UA},
    )
    assert (checked.status_code, checked.headers["content-type"]) == (200, "image/gif")
    await server.stop()
    [stored] = server.events()
    assert (stored["event_name"], stored["pathname"], stored["screen_width"]) == (
        "pageview",
        "/newsletter",
        1280,
    )


async def test_cors_preflight(server: RunningServer) -> None:
    response = await server.client.options(
        f"{server.url}/api/event",
        headers={"Origin": "https://example.com", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "GET" in response.headers["access-control-allow-methods"]
    assert "content-type" in response.headers["access-control-allow-headers"].lower()


async def test_other_methods_are_405(server: RunningServer) -> None:
    response = await server.client.put(f"{server.url}/api/event", json=SEED_EVENT)
    assert response.status_code == 405
    assert response.json()["error"]


async def test_bots_get_202_and_are_dropped(server: RunningServer) -> None:
    response = await server.post_event(SEED_EVENT, headers={"User-Agent": GOOGLEBOT})
    assert response.status_code == 202
    await server.post_event(SEED_EVENT)
    await server.stop()
    assert len(server.events()) == 1


async def test_bots_are_kept_when_filter_is_off(start_server: Any) -> None:
    server = await start_server(filter_bots=False)
    assert (
        await server.post_event(SEED_EVENT, headers={"User-Agent": GOOGLEBOT})
    ).status_code == 202
    await server.stop()
    assert len(server.events()) == 1


async def test_origin_allowlist(start_server: Any) -> None:
    server = await start_server(site_ids=("example.com",))

    async def post(origin: str | None) -> int:
        headers = {"User-Agent": BROWSER_UA}
        if origin is not None:
            headers["Origin"] = origin
        return (await server.post_event(SEED_EVENT, headers=headers)).status_code

    assert await post("https://example.com") == 202
    assert await post("https://example.com:8443") == 202
    assert await post(None) == 202  # server-side call
    assert await post("https://example.com.evil.com") == 403
    assert await post("https://evil.com") == 403
    assert await post("null") == 403
    await server.stop()
    assert len(server.events()) == 3


async def test_a_tiny_rate_limit_says_to_wait_at_most_a_day(start_server: Any) -> None:
    server = await start_server(rate_limit=1e-300, rate_burst=1.0)  # was 300 digits
    assert (await server.post_event(SEED_EVENT)).status_code == 202
    limited = await server.post_event(SEED_EVENT)
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "86400")


async def test_rate_limit_per_site(start_server: Any) -> None:
    server = await start_server(rate_limit=1.0, rate_burst=3.0)
    statuses = [(await server.post_event(SEED_EVENT)).status_code for _ in range(5)]
    assert statuses[:3] == [202, 202, 202]
    limited = await server.post_event(SEED_EVENT)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["access-control-allow-origin"] == "*"
    other_site = await server.post_event(event(d="other.org", u="https://other.org/"))
    assert other_site.status_code == 202


async def test_check_order_413_400_422_400_403_429(start_server: Any) -> None:
    server = await start_server(site_ids=("example.com",), rate_limit=0.001, rate_burst=1.0)
    evil = {"User-Agent": BROWSER_UA, "Origin": "https://evil.com"}
    too_big = json.dumps({"n": "x" * 70_000}).encode()
    assert (await server.post_event(content=too_big, headers=evil)).status_code == 413
    assert (await server.post_event(content=b"{nope", headers=evil)).status_code == 400
    assert (await server.post_event({"d": "bad/site"}, headers=evil)).status_code == 422
    assert (await server.post_event(event(d="bad/site"), headers=evil)).status_code == 400
    assert (await server.post_event(SEED_EVENT, headers=evil)).status_code == 403
    # None of the above spent the site's single token:
    assert (await server.post_event(SEED_EVENT)).status_code == 202
    assert (await server.post_event(SEED_EVENT)).status_code == 429


async def test_flush_on_count(start_server: Any) -> None:
    server = await start_server(flush_count=3, flush_interval=3600.0)
    for _ in range(3):
        await server.post_event(SEED_EVENT)
    with trio.fail_after(10):
        while len(server.events()) < 3:
            await trio.sleep(0.05)


async def test_flush_on_interval(start_server: Any) -> None:
    server = await start_server(flush_count=1000, flush_interval=0.2)
    await server.post_event(SEED_EVENT)
    with trio.fail_after(10):
        while not server.events():
            await trio.sleep(0.05)


async def test_flush_on_stop(start_server: Any) -> None:
    server = await start_server(flush_count=1000, flush_interval=3600.0)
    for index in range(25):
        await server.post_event(event(u=f"https://example.com/{index}"))
    assert server.events() == []
    await server.stop()
    assert sorted(e["pathname"] for e in server.events()) == sorted(f"/{i}" for i in range(25))


async def test_back_pressure_answers_503_and_loses_nothing(start_server: Any) -> None:
    server = await start_server(
        flush_count=1, flush_interval=3600.0, queue_size=2, shutdown_timeout=3.0
    )
    events_dir = server.data_dir / "events"
    events_dir.rmdir()
    events_dir.write_text("not a directory: every flush fails")  # a broken disk
    statuses = [(await server.post_event(SEED_EVENT)).status_code for _ in range(10)]
    accepted = statuses.count(202)
    assert 503 in statuses
    assert set(statuses) == {202, 503}
    busy = await server.post_event(SEED_EVENT)
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
    ready = await server.client.get(f"{server.url}/health/ready")
    assert ready.status_code == 503
    events_dir.unlink()  # the disk recovers: the retried flushes go through
    events_dir.mkdir()
    await server.stop()
    assert len(server.events()) == accepted


async def test_health_endpoints(server: RunningServer) -> None:
    live = await server.client.get(f"{server.url}/health")
    assert (live.status_code, live.text) == (200, "ok")
    ready = await server.client.get(f"{server.url}/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    missing = await server.client.get(f"{server.url}/no/such/page")
    assert missing.status_code == 404
    assert missing.json()["error"]


async def test_an_error_before_the_body_arrives_ends_the_connection(
    server: RunningServer,
) -> None:
    """A 404 sent while the body still arrives: the next request must not wait for it."""

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"x" * 10
        await trio.sleep(0.3)
        yield b"y" * 990

    missing = await server.client.post(
        f"{server.url}/no/such/page", content=slow_body(), headers={"content-length": "1000"}
    )
    assert (missing.status_code, missing.headers["connection"]) == (404, "close")
    with trio.fail_after(5):  # on the same client: it had hung until its timeout
        assert (await server.client.get(f"{server.url}/health")).status_code == 200


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        ("POST /api/keys", b"401"),  # answered by the route, before reading the body
        ("GET /", b"200"),  # a page that ignores a body
        ("POST /no/such/page", b"404"),
        ("PUT /api/v2/query", b"405"),
        ("PATCH /api/event", b"405"),  # the ingestion endpoint, not Quart's
    ],
)
async def test_an_answer_before_the_body_closes_the_connection_it_cannot_reuse(
    server: RunningServer, request_line: str, status: bytes
) -> None:
    """The body comes in a later packet than the headers. The answer says the
    connection ends and the server ends it; it had stayed open for good (the
    client's next request waited forever, the server kept the socket)."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    head = f"{request_line} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10\r\n\r\n"
    await stream.send_all(head.encode())
    answer = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in answer:
            answer += await stream.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 " + status), answer
        assert b"\r\nconnection: close\r\n" in answer.lower()
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(b"0123456789GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        while chunk := await stream.receive_some(4096):  # until the server closes
            answer += chunk
    assert answer.count(b"HTTP/1.1 ") == 1
    await stream.aclose()


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    server: RunningServer,
) -> None:
    """After an answer of the Quart app, the idle timer had been cancelled with the
    request: a client that kept the connection open held it for good."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(f"GET /api/auth/status HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = b""
    with trio.fail_after(5 + 5):  # hypercorn's keep_alive_timeout is 5 s
        while chunk := await stream.receive_some(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1 ") == 1
    await stream.aclose()


@pytest.mark.parametrize("path", ["/api/event", "/api/events", "/api/v2/query"])
async def test_clients_hanging_up_on_an_oversized_body_log_no_traceback(
    server: RunningServer, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused before it is read, the client hangs up: hypercorn's teardown races the
    answer's last write (trio.BusyResourceError), which must not become a traceback."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    declared = 20 * 1024 * 1024
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()

    async def hang_up_after_the_answer(sent: int, answers: list[bytes]) -> None:
        stream = await trio.open_tcp_stream(host, int(port))
        try:
            await stream.send_all(head + b"x" * sent)
            answers.append(await stream.receive_some(200))
        except trio.BrokenResourceError:  # the server closed first: as good
            answers.append(b"HTTP/1.1 413")
        finally:
            await stream.aclose()

    answers: list[bytes] = []
    async with trio.open_nursery() as nursery:
        for attempt in range(60):
            nursery.start_soon(hang_up_after_the_answer, attempt * 7919 % 300_000, answers)
    assert len(answers) == 60
    assert all(answer.startswith(b"HTTP/1.1 413") for answer in answers), answers[:3]
    await trio.sleep(0.2)  # teardowns still under way
    assert "Traceback" not in caplog.text and "Error in ASGI" not in caplog.text
    assert (await server.post_event(SEED_EVENT)).status_code == 202


async def post_batch(server: RunningServer, content: bytes, **headers: str) -> Any:
    return await server.client.post(
        f"{server.url}/api/events", content=content, headers={"User-Agent": BROWSER_UA, **headers}
    )


async def test_batch_json_array_keeps_the_valid_events(server: RunningServer) -> None:
    batch = [
        event(u="https://example.com/1"),
        event(u="https://example.com/2"),
        {"d": "example.com", "n": "pageview"},
        "not an object",
        event(u="https://example.com/3"),
    ]
    response = await post_batch(server, json.dumps(batch).encode())
    assert response.status_code == 202
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (3, 2)
    assert [r["status"] for r in answer["results"]] == [202, 202, 422, 400, 202]
    assert "u" in answer["results"][2]["error"]
    await server.stop()
    assert sorted(e["pathname"] for e in server.events()) == ["/1", "/2", "/3"]


async def test_batch_ndjson(server: RunningServer) -> None:
    lines = [json.dumps(event(u=f"https://example.com/{i}")) for i in range(3)]
    lines.insert(1, "{broken")
    response = await post_batch(server, "\n".join(lines).encode())
    answer = response.json()
    assert [r["status"] for r in answer["results"]] == [202, 400, 202, 202]
    assert "line 2" in answer["results"][1]["error"]
    await server.stop()
    assert len(server.events()) == 3


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (json.dumps([SEED_EVENT] * 1001).encode(), 413),
        (b"[" + b" " * (1024 * 1024) + b"]", 413),
        (b"", 400),
        (b"[]", 400),
        (b"[1, 2", 400),
        (json.dumps([{"d": "x"}]).encode(), 400),  # nothing valid in it
    ],
    ids=["1001 events", "over 1 MB", "empty", "empty array", "broken array", "all invalid"],
)
async def test_batch_errors(server: RunningServer, content: bytes, status: int) -> None:
    response = await post_batch(server, content)
    assert response.status_code == status
    assert response.headers["access-control-allow-origin"] == "*"


async def test_batch_origin_and_rate_limit(start_server: Any) -> None:
    server = await start_server(site_ids=("example.com",), rate_limit=0.001, rate_burst=2.0)
    content = json.dumps([SEED_EVENT] * 3).encode()
    assert (await post_batch(server, content, Origin="https://evil.com")).status_code == 403
    answer = (await post_batch(server, content)).json()
    assert [r["status"] for r in answer["results"]] == [202, 202, 429]
    turned_away = await post_batch(server, content)  # none taken: come back later
    assert turned_away.status_code == 429
    assert int(turned_away.headers["retry-after"]) > 0
    assert [r["status"] for r in turned_away.json()["results"]] == [429] * 3
    mixed = json.dumps([SEED_EVENT, {"d": "example.com"}]).encode()
    assert (await post_batch(server, mixed)).status_code == 400  # one would fail again


async def test_a_full_batch_of_1000(server: RunningServer) -> None:
    content = "\n".join(json.dumps(event(u=f"https://example.com/{i}")) for i in range(1000))
    response = await post_batch(server, content.encode())
    assert response.json()["accepted"] == 1000
    await server.stop()
    assert len(server.events()) == 1000


async def test_events_that_arrive_once_stopping_are_refused_not_stored() -> None:
    """Hypercorn closes idle connections when it stops, maybe one a request just came
    in on: stored, its 202 would be lost and a retry would count it twice."""
    stopping = trio.Event()
    elsewhere: list[str] = []

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        elsewhere.append(scope["path"])

    endpoint = IngestEndpoint(cast(Ingestor, None), fallback, stopping=stopping)  # never asked
    stopping.set()
    for method, path in [("POST", "/api/event"), ("GET", "/api/event"), ("POST", "/api/events")]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "headers": []}
        await endpoint(scope, None, send)  # type: ignore[arg-type]
        start, body = sent
        assert start["status"] == 503
        assert (b"retry-after", b"1") in start["headers"]
        assert json.loads(body["body"]) == {
            "error": "the server is stopping; send it again shortly"
        }
    await endpoint({"type": "http", "method": "GET", "path": "/health"}, None, None)  # type: ignore[arg-type]
    assert elsewhere == ["/health"]  # the rest of the app finishes its requests as before
