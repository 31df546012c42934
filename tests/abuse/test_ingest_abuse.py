"""A real ingest (uvicorn, Kafka, PostgreSQL) under hostile clients: huge or broken bodies, slow senders, odd text."""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import time
from typing import Any

import httpx
import orjson

from clm_shared.categories import Category
from clm_shared.topics import Topics
from tests.abuse.conftest import BODY_TIMEOUT_S, Service
from tests.utils.factories import track_call
from tests.utils.kafka import read_touchpoints

MB = 1024 * 1024
# What a hostile client may put in any text field; all of it must come back byte for byte.
HOSTILE = (
    "'; DROP TABLE customers; -- <script>alert(1)</script> \x01\x1b[31m\x1f \u202etxet\u202c \u200f " + "ü😀" * 500
)


async def post(service: Service, endpoint: str, content: bytes, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=service.url, auth=(service.write_key, ""), timeout=60) as client:
        return await client.post(f"/v1/{endpoint}", content=content, headers=headers)


async def still_serving(service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        assert (await client.get("/healthz")).status_code == 200
    assert (await post(service, "track", orjson.dumps(track_call()))).status_code == 200


async def test_bodies_far_over_the_limits_and_broken_gzip_are_refused_cleanly(ingest: Service) -> None:
    fifty_mb = b'{"batch": [' + b"0," * (25 * MB) + b"0]}"
    deep = b'{"userId": "u", "event": "Deep", "properties": {"p": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"
    bomb = gzip.compress(b" " * (64 * MB), compresslevel=9)  # ~64 KB on the wire
    cases: list[tuple[str, bytes, dict[str, str], int]] = [
        ("batch", fifty_mb, {}, 413),
        ("track", orjson.dumps(track_call(properties={"blob": "x" * 400_000})), {}, 413),
        ("batch", orjson.dumps({"batch": [track_call(properties={"blob": "x" * 40_000})]}), {}, 413),
        ("track", deep, {}, 400),
        ("track", b"\x1f\x8b\x08\x00garbage, not deflate", {"Content-Encoding": "gzip"}, 400),
        ("track", gzip.compress(orjson.dumps(track_call()))[:-8], {"Content-Encoding": "gzip"}, 400),
        ("batch", bomb, {"Content-Encoding": "gzip"}, 413),
    ]
    for endpoint, body, headers, status in cases:
        answer = await post(ingest, endpoint, body, **headers)
        assert answer.status_code == status, (endpoint, len(body), headers, answer.text[:300])
        assert answer.json()["success"] is False
    await still_serving(ingest)


def open_body(service: Service, *, declared: int, first: bytes) -> socket.socket:
    """A connection whose request headers are complete and whose body has only begun."""
    host, port = service.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    auth = "Basic " + base64.b64encode(f"{service.write_key}:".encode()).decode()
    head = (
        f"POST /v1/track HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock


def answer_then_close(sock: socket.socket, trickle: bool) -> tuple[bytes, float]:
    """Read until the server closes; a trickling client sends one more byte whenever it is let to."""
    started = time.monotonic()
    sock.settimeout(0.5 if trickle else 60)
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:  # nothing yet: the trickler sends its next byte
            try:
                sock.sendall(b"x")
            except OSError:
                continue
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    sock.close()
    return received, time.monotonic() - started


async def test_slow_clients_get_408_and_are_cut_off_while_others_are_served(ingest: Service) -> None:
    stalled = open_body(ingest, declared=1000, first=b'{"userId": "u", "event": "')
    trickling = open_body(ingest, declared=100_000, first=b'{"userId": "u", "event": "')
    cut_off = [
        asyncio.create_task(asyncio.to_thread(answer_then_close, stalled, False)),
        asyncio.create_task(asyncio.to_thread(answer_then_close, trickling, True)),
    ]
    for _ in range(5):  # while both hold their connections
        assert (await post(ingest, "track", orjson.dumps(track_call()))).status_code == 200
    for received, held_s in await asyncio.gather(*cut_off):
        assert received.startswith(b"HTTP/1.1 408"), received[:200]
        assert b"connection: close" in received.lower()
        assert held_s < BODY_TIMEOUT_S + 30  # the deadline, plus slack for a loaded machine
    await still_serving(ingest)


async def test_hostile_text_and_unknown_events_are_published_verbatim(
    ingest: Service, topics: Topics, kafka_bootstrap: str
) -> None:
    sent = track_call(
        "Bought A Unicorn",
        userId=HOSTILE[:200],
        messageId="hostile-1",
        properties={"note": HOSTILE, HOSTILE[:50]: [HOSTILE, {"deep": HOSTILE}]},
        context={"campaign": {"source": HOSTILE[:300]}},
    )
    answer = await post(ingest, "track", orjson.dumps(sent))
    assert (answer.status_code, answer.json()) == (200, {"success": True})
    (touchpoint,) = await read_touchpoints(kafka_bootstrap, topics.touchpoints, 1)
    assert touchpoint.category == Category.OTHER  # accepted, stored, counted nowhere
    assert touchpoint.event == "Bought A Unicorn"
    assert touchpoint.customer_key == HOSTILE[:200]
    assert touchpoint.properties == sent["properties"]
    assert touchpoint.context["campaign"]["source"] == HOSTILE[:300]


async def test_a_nul_is_refused_at_the_edge_naming_the_field(ingest: Service) -> None:
    body: dict[str, Any] = {"batch": [track_call(), track_call(properties={"note": "a\x00b"})]}
    answer = await post(ingest, "batch", orjson.dumps(body))
    assert answer.status_code == 422
    assert answer.json()["errors"] == [
        {"index": 1, "type": "track", "field": "properties.note", "message": answer.json()["errors"][0]["message"]}
    ]
    assert "NUL" in answer.json()["errors"][0]["message"]
