"""An optional Prometheus endpoint with the figures `edge-gateway status` shows.

Off by default and on loopback by default. The figures are read from the live
counters when Prometheus scrapes (a custom collector), so the hot path pays
nothing for them; prometheus-client is imported only when the endpoint is on.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import time
from collections.abc import Callable, Iterator
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

log = structlog.get_logger("gateway.metrics")


class GatewayCollector:
    """A prometheus-client collector: one `collect()` per scrape, from the live counters."""

    def __init__(
        self, buffer: Buffer, publisher: Publisher, drivers: Callable[[], list[Driver]]
    ) -> None:
        self.buffer = buffer
        self.publisher = publisher
        self.drivers = drivers

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
        with contextlib.suppress(sqlite3.Error):  # unknown: no figure, rather than a 0
            oldest = oldest_accepted(self.buffer.path)
            yield gauge(
                "buffer_oldest_reading_age_seconds",
                "Age of the oldest reading in the buffer (0 when empty): the uplink's lag",
                time.time() - oldest if oldest else 0,
            )
        with contextlib.suppress(OSError):
            yield gauge(
                "buffer_disk_bytes",
                "Bytes of the buffer's files (database and WAL)",
                bytes_on_disk(self.buffer.path),
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


@contextlib.contextmanager
def metrics_endpoint(settings: MetricsSection, collector: GatewayCollector) -> Iterator[None]:
    """Serve /metrics while the block runs (when enabled); raise `ConfigError` if it cannot."""
    if not settings.enabled:
        yield
        return
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise ConfigError(
            "metrics.enabled is true, but prometheus-client is not installed: "
            "/opt/edge-gateway/bin/pip install 'edge-gateway[prometheus]', or set it to false"
        ) from None
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    try:
        server, thread = start_http_server(settings.port, settings.host, registry=registry)
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
        server.shutdown()
        server.server_close()
        thread.join()
