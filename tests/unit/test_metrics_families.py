"""The metrics carry what `status` shows, driver counters and damaged chunks included; an
endpoint that cannot start stops the gateway only when its settings are at fault."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from drivers.base import DriverStats
from gateway.buffer import Buffer
from gateway.config import AmqpSection, GatewaySection, MetricsSection
from gateway.errors import ConfigError
from gateway.metrics import GatewayCollector, metrics_endpoint
from gateway.model import Reading
from gateway.publisher import Publisher


@dataclass
class _Driver:
    name: str
    stats: DriverStats


async def test_driver_counters_and_damaged_chunks_are_exported(tmp_path: Path) -> None:
    modbus = _Driver("meter", DriverStats(type="serial"))
    modbus.stats.bump("request_errors", 9)
    modbus.stats.bump("bad_crc")
    async with Buffer(tmp_path / "buffer.db", max_bytes=1 << 20) as buffer:
        buffer.counters.damaged = 3  # as after setting three damaged chunks aside
        publisher = Publisher(AmqpSection(), GatewaySection(id="gw"), buffer)
        registry = CollectorRegistry()
        collector = GatewayCollector(buffer, publisher, lambda: [modbus])
        registry.register(collector)
        collector.read_disk()
        text = generate_latest(registry).decode()
    lines = text.splitlines()
    assert "edge_gateway_buffer_damaged_chunks_total 3.0" in lines
    labels = 'driver="meter",kind="request_errors",type="serial"'
    assert f"edge_gateway_driver_events_total{{{labels}}} 9.0" in lines
    labels = 'driver="meter",kind="bad_crc",type="serial"'
    assert f"edge_gateway_driver_events_total{{{labels}}} 1.0" in lines


async def test_the_backlogs_age_and_size_are_exported(tmp_path: Path) -> None:
    """What an operator alerts on: how old the oldest waiting reading is, and how full the
    buffer is (status showed them; the endpoint had only the count)."""
    async with Buffer(tmp_path / "buffer.db", max_bytes=1 << 20, commit_interval=0) as buffer:
        when = datetime(2026, 1, 1, tzinfo=UTC)
        await buffer.put([Reading("d1", when, {"t": 1.0}, "test")])
        await asyncio.sleep(1.2)
        publisher = Publisher(AmqpSection(), GatewaySection(id="gw"), buffer)
        registry = CollectorRegistry()
        collector = GatewayCollector(buffer, publisher, list)
        registry.register(collector)
        collector.read_disk()
        figures = {
            line.split()[0]: float(line.split()[1])
            for line in generate_latest(registry).decode().splitlines()
            if not line.startswith("#")
        }
    assert 1.0 <= figures["edge_gateway_buffer_oldest_reading_age_seconds"] < 10
    assert figures["edge_gateway_buffer_disk_bytes"] > 0
    assert figures["edge_gateway_buffer_max_bytes"] == 1 << 20
    assert figures["edge_gateway_buffer_readings"] == 1


@pytest.mark.parametrize(
    ("error", "stops"),
    [(errno.EADDRINUSE, True), (errno.EACCES, True), (errno.EADDRNOTAVAIL, False)],
)
async def test_an_address_not_there_yet_leaves_the_gateway_running_without_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, stops: bool
) -> None:
    """A port in use or refused is the settings' fault (exit 2, not restarted); an address
    not assigned yet (DHCP at boot) must not stop the readings for an optional endpoint."""

    def refuse(_sock: socket.socket, _address: object) -> None:  # what the kernel answers
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(socket.socket, "bind", refuse)
    settings = MetricsSection(enabled=True, host="127.0.0.1", port=9108)
    async with Buffer(tmp_path / "buffer.db", max_bytes=1 << 20) as buffer:
        publisher = Publisher(AmqpSection(), GatewaySection(id="gw"), buffer)
        collector = GatewayCollector(buffer, publisher, lambda: [])
        ran = False
        with capture_logs() as logs, contextlib.ExitStack() as stack:
            if stops:
                stack.enter_context(pytest.raises(ConfigError, match="choose another"))
            async with metrics_endpoint(settings, collector):
                ran = True
    assert ran is not stops
    if not stops:
        [logged] = [e for e in logs if e["log_level"] == "error"]
        assert logged["event"] == "metrics endpoint not started; the gateway runs without it"
