"""An optional Prometheus endpoint with the figures `edge-gateway status` shows.

Off by default and on loopback by default. The figures are read from the live
counters when Prometheus scrapes (a custom collector), so the hot path pays
nothing for them; prometheus-client is imported only when the endpoint is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog

from drivers.base import Driver
from gateway.buffer import Buffer
from gateway.clock import system_clock_synchronized
from gateway.config import MetricsSection
from gateway.errors import ConfigError
from gateway.publisher import Publisher
from gateway.status import bytes_on_disk, oldest_accepted

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

log = structlog.get_logger("gateway.metrics")


class GatewayCollector:
    """A prometheus-client collector: one `collect()` per scrape, from the live counters."""

    def __init__(
        self, buffer: Buffer, publisher: Publisher, drivers: Callable[[], list[Driver]]
    ) -> None:
        self.buffer = buffer
        self.publisher = publisher
        self.drivers = drivers
        self.oldest_age_s: float | None = None
        """Age of the oldest buffered reading (0 when none); None when it could not be read."""
        self.disk_bytes: int | None = None

    def read_disk(self) -> None:
        """Take the figures that read the disk: before each scrape, off the event loop."""
        try:
            oldest = oldest_accepted(self.buffer.path)
            self.oldest_age_s = time.time() - oldest if oldest else 0.0
        except sqlite3.Error:
            self.oldest_age_s = None  # unknown: no figure, rather than a 0
        try:
            self.disk_bytes = bytes_on_disk(self.buffer.path)
        except OSError:
            self.disk_bytes = None

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"edge_gateway_{name}", text, value=value)

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"edge_gateway_{name}", text, value=value)

        buffer, pub = self.buffer.counters, self.publisher.counters
        yield gauge(
            "buffer_readings",
            "Readings in the buffer (confirmed ones are deleted within a second)",
            self.buffer.depth,
        )
        if self.oldest_age_s is not None:
            yield gauge(
                "buffer_oldest_reading_age_seconds",
                "Age of the oldest reading in the buffer (0 when empty): the uplink's lag",
                self.oldest_age_s,
            )
        if self.disk_bytes is not None:
            yield gauge(
                "buffer_disk_bytes",
                "Bytes of the buffer's files (database and WAL)",
                self.disk_bytes,
            )
        yield gauge("buffer_max_bytes", "buffer.max_bytes", self.buffer.max_bytes)
        yield counter(
            "buffer_accepted_readings", "Readings committed to the buffer", buffer.accepted
        )
        yield counter("buffer_rejected_readings", "Readings refused (buffer full)", buffer.rejected)
        yield counter("buffer_dropped_readings", "Readings dropped by drop_oldest", buffer.dropped)
        yield counter("buffer_commits", "Group commits (fsyncs)", buffer.commits)
        yield counter(
            "buffer_damaged_chunks", "Chunks set aside as damaged (never sent)", buffer.damaged
        )
        yield gauge(
            "uplink_connected", "1 while connected to a broker", pub.connected_url is not None
        )
        yield gauge("uplink_blocked", "1 while the broker blocks publishing", pub.blocked)
        yield gauge("uplink_unconfirmed_messages", "Messages awaiting a confirm", pub.in_flight)
        yield gauge(
            "uplink_max_unconfirmed_messages",
            "amqp.max_in_flight",
            self.publisher.config.max_in_flight,
        )
        yield gauge(
            "uplink_last_confirm_timestamp_seconds",
            "Unix time of the last confirm",
            pub.last_confirm,
        )
        yield counter("uplink_published_readings", "Readings confirmed", pub.published_readings)
        yield counter("uplink_published_messages", "Messages confirmed", pub.published_messages)
        yield counter("uplink_returned_messages", "Messages returned unroutable", pub.returned)
        yield counter("uplink_nacked_messages", "Messages refused by the broker", pub.nacked)
        yield counter(
            "uplink_too_large_messages",
            "Publishes of a reading larger than the broker's max_message_size",
            pub.too_large,
        )
        yield counter(
            "uplink_connection_failures",
            "Failed or lost broker connections",
            pub.connection_failures,
        )
        yield gauge(
            "clock_synchronized",
            "1 when NTP has synchronised the clock",
            system_clock_synchronized(),
        )
        yield from self._drivers()

    def _drivers(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["driver", "type"]
        state = GaugeMetricFamily(
            "edge_gateway_driver_state",
            "1 for the driver's current state",
            labels=[*labels, "state"],
        )
        last = GaugeMetricFamily(
            "edge_gateway_driver_last_reading_timestamp_seconds", "Unix time", labels=labels
        )
        counts: dict[str, Any] = {
            field: CounterMetricFamily(f"edge_gateway_driver_{field}", text, labels=labels)
            for field, text in (
                ("readings", "Readings handed to the buffer"),
                ("malformed", "Payloads that did not decode"),
                ("oversized", "Payloads over the size limit"),
                ("errors", "Errors (connection, buffer refusals, failures)"),
            )
        }
        events = CounterMetricFamily(
            "edge_gateway_driver_events",
            "The driver's own counters (status `counters`), by kind",
            labels=[*labels, "kind"],
        )
        for driver in self.drivers():
            stats = driver.stats
            names = [driver.name, stats.type]
            state.add_metric([*names, stats.state], 1)
            last.add_metric(names, stats.last_reading or 0)
            for field, family in counts.items():
                family.add_metric(names, getattr(stats, field))
            for kind, value in stats.counters.items():
                events.add_metric([*names, kind], value)
        yield state
        yield last
        yield from counts.values()
        yield events


@contextlib.asynccontextmanager
async def metrics_endpoint(
    settings: MetricsSection, collector: GatewayCollector
) -> AsyncIterator[None]:
    """Serve /metrics while the block runs (when enabled); raise `ConfigError` if it cannot."""
    if not settings.enabled:
        yield
        return
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        raise ConfigError(
            "metrics.enabled is true, but prometheus-client is not installed: "
            "/opt/edge-gateway/bin/pip install 'edge-gateway[prometheus]', or set it to false"
        ) from None
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    endpoint = _Endpoint(registry, collector)
    try:
        server = await asyncio.start_server(
            endpoint.serve, settings.host, settings.port, limit=_MAX_REQUEST_BYTES
        )
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):  # the settings must change
            raise ConfigError(
                f"metrics: cannot listen on {settings.host}:{settings.port} ({exc}); "
                "choose another metrics.port or stop what uses it"
            ) from None
        # An address not assigned yet (DHCP at boot), a name that does not resolve: passing
        # trouble of an optional endpoint must not stop the readings.
        log.error(
            "metrics endpoint not started; the gateway runs without it",
            host=settings.host,
            port=settings.port,
            error=str(exc),
            hint="check metrics.host; restart the gateway once the address exists",
        )
        yield
        return
    log.info("prometheus metrics served", url=f"http://{settings.host}:{settings.port}/metrics")
    try:
        yield
    finally:
        server.close()
        await endpoint.close()


_MAX_REQUEST_BYTES = 8192
"""A scrape's request line and headers fit in this; more is not a scrape."""
_MAX_CONNECTIONS = 16
"""Connections served at once; more are closed at once (Prometheus uses one per target)."""
IDLE_TIMEOUT_S = 10.0
"""How long a connection may take to send its request, or to take the answer."""


class _Endpoint:
    """HTTP/1.1 on the event loop, one request per connection: GET or HEAD /metrics.

    On the loop rather than in prometheus-client's server thread, so that a scrape reads
    the counters between two of the loop's steps, never while they change, and a client
    that connects and says nothing costs a socket for `IDLE_TIMEOUT_S`, not a thread."""

    def __init__(self, registry: CollectorRegistry, collector: GatewayCollector) -> None:
        self.registry = registry
        self.collector = collector
        self.connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= _MAX_CONNECTIONS:
            writer.close()
            return
        serving = asyncio.current_task()
        assert serving is not None, "asyncio runs each connection's callback as a task"
        self.connections[writer] = serving
        try:
            async with asyncio.timeout(IDLE_TIMEOUT_S):
                head = b""
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).lstrip(b"\r\n")
                    status, headers, body = await self.answer(head)
                except asyncio.LimitOverrunError:
                    status, headers, body = _REFUSED["431 Request Header Fields Too Large"]
                except ValueError:
                    status, headers, body = _REFUSED["400 Bad Request"]
                lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
                if head.startswith(b"HEAD "):
                    body = b""
                writer.write("\r\n".join([*lines, "Connection: close", "", ""]).encode() + body)
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # silent, or gone: nobody to answer
        except asyncio.CancelledError:
            # Only `close()` cancels a connection (a scrape still reading the disk at a
            # stop): the task ends here, as Python 3.11's streams log a cancelled one as an
            # error with a traceback. Nothing else waits for this task to be cancelled.
            pass
        finally:
            del self.connections[writer]
            writer.close()

    async def answer(self, head: bytes) -> tuple[str, list[str], bytes]:
        """Status line, headers and body for a request's head (ValueError: not HTTP)."""
        from prometheus_client.exposition import choose_encoder, gzip_accepted

        request, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request.split()
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if target.partition("?")[0] != "/metrics":
            return _REFUSED["404 Not Found"]
        if method not in ("GET", "HEAD"):
            return _REFUSED["405 Method Not Allowed"]
        await asyncio.to_thread(self.collector.read_disk)
        encode, content_type = choose_encoder(headers.get("accept", ""))
        body = encode(self.registry)
        extra = [f"Content-Type: {content_type}"]
        if gzip_accepted(headers.get("accept-encoding", "")):
            body = gzip.compress(body)
            extra.append("Content-Encoding: gzip")
        return "200 OK", extra, body

    async def close(self) -> None:
        """Hang up on the clients and let their tasks end: one still running when the loop
        ends is cancelled, and Python 3.11's streams log that as an error with a traceback.
        A scrape that is reading the disk gets a second to finish, not more: it is a stop."""
        serving = list(self.connections.values())
        for writer in self.connections:
            writer.transport.abort()  # also one that does not read its answer
        if serving:
            _, reading_the_disk = await asyncio.wait(serving, timeout=1.0)
            for task in reading_the_disk:
                task.cancel()
            if reading_the_disk:
                await asyncio.wait(reading_the_disk)


_TEXT = "Content-Type: text/plain; charset=utf-8"
_REFUSED = {
    status: (status, [_TEXT, *extra], text.encode())
    for status, extra, text in (
        ("400 Bad Request", [], "not an HTTP request; ask for GET /metrics\n"),
        ("404 Not Found", [], "only /metrics is here\n"),
        ("405 Method Not Allowed", ["Allow: GET, HEAD"], "GET or HEAD /metrics\n"),
        (
            "431 Request Header Fields Too Large",
            [],
            f"a request's line and headers must fit in {_MAX_REQUEST_BYTES} bytes\n",
        ),
    )
}
