"""The /metrics endpoint speaks enough HTTP for Prometheus and curl, and a client that
connects and says nothing, or many at once, costs bounded resources for a bounded time."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from edge_gateway_sim.brokers import free_port

from gateway import metrics
from gateway.buffer import Buffer
from gateway.config import AmqpSection, GatewaySection, MetricsSection
from gateway.metrics import GatewayCollector, metrics_endpoint
from gateway.publisher import Publisher


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[int]:
    """A gateway's endpoint on a free loopback port, with a buffer and a publisher."""
    settings = MetricsSection(enabled=True, host="127.0.0.1", port=free_port())
    async with Buffer(tmp_path / "buffer.db", max_bytes=1 << 20) as buffer:
        publisher = Publisher(AmqpSection(), GatewaySection(id="gw"), buffer)
        async with metrics_endpoint(settings, GatewayCollector(buffer, publisher, list)):
            yield settings.port


async def ask(port: int, request: str) -> tuple[str, dict[str, str], bytes]:
    """Send one raw request; the status line, headers (lower-case names) and body, all empty
    when the endpoint hangs up without an answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request.encode())
    try:
        answer = await asyncio.wait_for(reader.read(), 5)  # the endpoint closes when done
    except ConnectionResetError:  # closed with our request unread
        answer = b""
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


async def test_a_scrape_gets_the_figures_and_head_only_their_headers(port: int) -> None:
    status, headers, body = await ask(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body)
    assert b"\nedge_gateway_buffer_readings 0.0\n" in body
    assert b"\nedge_gateway_buffer_oldest_reading_age_seconds 0.0\n" in body  # from the disk

    for request in ("HEAD /metrics HTTP/1.1\r\n\r\n", "\r\nHEAD /metrics HTTP/1.1\r\n\r\n"):
        status, headers, head_body = await ask(port, request)
        assert status == "HTTP/1.1 200 OK"
        assert int(headers["content-length"]) > 0
        assert head_body == b""


async def test_openmetrics_and_gzip_when_asked(port: int) -> None:
    request = (
        "GET /metrics?x=1 HTTP/1.1\r\n"
        "Accept: application/openmetrics-text;version=1.0.0\r\n"
        "Accept-Encoding: gzip\r\n\r\n"
    )
    status, headers, body = await ask(port, request)
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(body).endswith(b"# EOF\n")


@pytest.mark.parametrize(
    ("request_line", "expected"),
    [
        ("GET / HTTP/1.1", "HTTP/1.1 404 Not Found"),
        ("GET /metricsX HTTP/1.1", "HTTP/1.1 404 Not Found"),
        ("POST /metrics HTTP/1.1", "HTTP/1.1 405 Method Not Allowed"),
    ],
)
async def test_other_paths_and_methods_are_refused(
    port: int, request_line: str, expected: str
) -> None:
    status, headers, _ = await ask(port, request_line + "\r\n\r\n")
    assert status == expected
    if "405" in expected:
        assert headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("request_head", "expected"),
    [
        ("\x16\x03\x01\x02\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        ("\r\nGET  /metrics HTTP/1.1 \r\n\r\n", "HTTP/1.1 200 OK"),  # tolerated, as before
        ("GET /metrics HTTP/1.1\r\nX: " + "a" * 5000 + "\r\n\r\n", "HTTP/1.1 200 OK"),
        ("GET /metrics HTTP/1.1\r\nX: " + "a" * 9000 + "\r\n\r\n", "HTTP/1.1 431 "),
    ],
)
async def test_garbage_and_oversized_requests_are_answered_and_the_endpoint_goes_on(
    port: int, request_head: str, expected: str
) -> None:
    status, _, _ = await ask(port, request_head)
    assert status.startswith(expected)
    status, _, _ = await ask(port, "GET /metrics HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"


async def test_a_silent_client_is_closed_after_the_idle_timeout(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "IDLE_TIMEOUT_S", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # EOF: the endpoint hung up
    finally:
        writer.close()


async def test_connections_beyond_the_limit_are_closed_and_scrapes_resume(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "IDLE_TIMEOUT_S", 1.0)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(16)]
    await asyncio.sleep(0.1)  # the endpoint has taken them
    status, _, _ = await ask(port, "GET /metrics HTTP/1.1\r\n\r\n")
    assert status == ""  # the 17th: closed without an answer
    for reader, _ in idle:  # each silent one goes at its timeout
        assert await asyncio.wait_for(reader.read(), 5) == b""
    status, _, _ = await ask(port, "GET /metrics HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"
    for _, writer in idle:
        writer.close()


async def test_a_stop_with_clients_connected_leaves_no_connection_task_behind(
    tmp_path: Path,
) -> None:
    """A connection's task still running when the loop ends is cancelled, which Python
    3.11's streams log as an error with a traceback."""
    settings = MetricsSection(enabled=True, host="127.0.0.1", port=free_port())
    async with Buffer(tmp_path / "buffer.db", max_bytes=1 << 20) as buffer:
        publisher = Publisher(AmqpSection(), GatewaySection(id="gw"), buffer)
        async with metrics_endpoint(settings, GatewayCollector(buffer, publisher, list)):
            _, idle = await asyncio.open_connection("127.0.0.1", settings.port)
            _, halfway = await asyncio.open_connection("127.0.0.1", settings.port)
            halfway.write(b"GET /metrics HTTP/1.1\r\n")
            await asyncio.sleep(0.1)  # the endpoint has taken both
        left = [
            task
            for task in asyncio.all_tasks()
            if task.get_coro().__qualname__ == "_Endpoint.serve" and not task.done()
        ]
    assert left == []
    idle.close()
    halfway.close()


async def test_a_stop_during_a_scrape_that_reads_a_slow_disk_ends_it_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop gives it a second, then cancels it: a connection task that ended cancelled
    is logged by Python 3.11's streams as an error with a traceback."""
    reading = threading.Event()

    def slow_disk(_self: GatewayCollector) -> None:
        reading.set()
        time.sleep(2)

    monkeypatch.setattr(GatewayCollector, "read_disk", slow_disk)
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    settings = MetricsSection(enabled=True, host="127.0.0.1", port=free_port())
    try:
        async with Buffer(tmp_path / "buffer.db", max_bytes=1 << 20) as buffer:
            publisher = Publisher(AmqpSection(), GatewaySection(id="gw"), buffer)
            async with metrics_endpoint(settings, GatewayCollector(buffer, publisher, list)):
                _, scraper = await asyncio.open_connection("127.0.0.1", settings.port)
                scraper.write(b"GET /metrics HTTP/1.1\r\n\r\n")
                await asyncio.to_thread(reading.wait, 5)
            for _ in range(10):
                await asyncio.sleep(0)  # the connection task's done callbacks run
            left = [
                task
                for task in asyncio.all_tasks()
                if task.get_coro().__qualname__ == "_Endpoint.serve" and not task.done()
            ]
            assert left == []  # else the loop's end cancels it, and 3.11 logs that
        scraper.close()
    finally:
        loop.set_exception_handler(None)
    assert reported == []
