"""A BLE site for end-to-end tests: private D-Bus + fake BlueZ + gateway process + RabbitMQ;
and `fake_radio`, the fake BlueZ alone for bleak in the test's own process.

The fake BlueZ runs in the test's event loop, so the gateway process (bleak, unmodified)
talks to it over a real dbus-daemon while the test flips faults. Blocking calls on the
gateway process go through `asyncio.to_thread`: the fake must keep answering D-Bus
calls while the gateway starts and stops.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from edge_gateway_sim.bluez import FakeBlueZ, PrivateBus
from edge_gateway_sim.bluez.devices import SimDevice
from edge_gateway_sim.consumer import ReadingCollector
from edge_gateway_sim.gateway_process import GatewayProcess
from harness import validate_message

from gateway.status import read_status


@dataclass
class BleSite:
    bluez: FakeBlueZ
    gateway: GatewayProcess
    collector: ReadingCollector
    state_dir: Path

    def readings(self, device: str | None = None, after: float = 0.0) -> list[dict[str, Any]]:
        """Readings that arrived, of one device (or all), with a sample time after `after`."""
        return [
            r
            for r in self.collector.received.kept
            if (device is None or r["device"] == device) and _epoch(r["ts"]) > after
        ]

    def per_device(self) -> Counter[str]:
        return Counter(r["device"] for r in self.collector.received.kept)

    def driver(self, name: str = "radio") -> dict[str, Any]:
        return dict(read_status(self.state_dir)["gateway"]["drivers"][name])

    async def wait(self, done: Any, within: float = 30) -> None:
        if not await self.collector.wait_until(lambda _got: done(), within):
            raise AssertionError(
                f"timed out; so far per device: {dict(self.per_device())}\n"
                f"{self.gateway.log_tail(40)}"
            )


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@asynccontextmanager
async def fake_radio(
    monkeypatch: pytest.MonkeyPatch, devices: Iterable[SimDevice]
) -> AsyncIterator[FakeBlueZ]:
    """bleak in this process, against a fake BlueZ on a private bus: for tests of one part
    of the driver (the scanner, a GATT poller) that need no gateway process or broker."""
    with PrivateBus() as bus:
        for name, value in bus.env.items():
            monkeypatch.setenv(name, value)
        async with FakeBlueZ(bus.address, devices) as bluez:
            yield bluez


@asynccontextmanager
async def ble_site(
    tmp_path: Path,
    rabbit_url: str,
    request: pytest.FixtureRequest,
    devices: Iterable[SimDevice],
    driver: str,
) -> AsyncIterator[BleSite]:
    """Everything runs until the block ends; every process is stopped, also on failure."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    state_dir = tmp_path / "state"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""\
gateway: {{id: gw, site: {name}, state_dir: {state_dir}}}
amqp: {{url: "{rabbit_url}", exchange: {name}}}
drivers:
  - type: ble
    name: radio
{driver}
logging: {{format: json}}
"""
    )
    with PrivateBus() as bus:
        async with FakeBlueZ(bus.address, devices) as bluez:
            async with ReadingCollector(
                rabbit_url, name, queue=name, validate=validate_message, keep_readings=True
            ) as collector:
                gateway = GatewayProcess(config, tmp_path / "gateway.log", env=bus.env, mqtt=False)
                try:
                    await asyncio.to_thread(gateway.start)
                    yield BleSite(bluez, gateway, collector, state_dir)
                    assert await asyncio.to_thread(gateway.terminate) == 0
                    assert not collector.received.invalid
                finally:
                    await asyncio.to_thread(gateway.close)
