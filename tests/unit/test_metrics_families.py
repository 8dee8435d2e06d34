"""The metrics carry what `status` shows, driver counters and damaged chunks included."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from drivers.base import DriverStats
from gateway.buffer import Buffer
from gateway.config import AmqpSection, GatewaySection
from gateway.metrics import GatewayCollector
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
        registry.register(GatewayCollector(buffer, publisher, lambda: [modbus]))
        text = generate_latest(registry).decode()
    lines = text.splitlines()
    assert "edge_gateway_buffer_damaged_chunks_total 3.0" in lines
    labels = 'driver="meter",kind="request_errors",type="serial"'
    assert f"edge_gateway_driver_events_total{{{labels}}} 9.0" in lines
    labels = 'driver="meter",kind="bad_crc",type="serial"'
    assert f"edge_gateway_driver_events_total{{{labels}}} 1.0" in lines
