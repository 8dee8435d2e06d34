"""The `type: ble` driver: one adapter's scanner, its GATT devices, and one way into the buffer.

bleak's callbacks (advertisements, notifications) only record what arrived; decoding and
putting happen in the driver's own task, so a decoder exception is counted and logged
here rather than swallowed by bleak's callback wrapper. A device cannot be asked to send
again, so readings the buffer refuses are held and retried, never dropped; while they
wait, at most `_INBOX_LIMIT` advertisements (and GATT readings) queue up, and the excess is
counted and logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import structlog
from bleak.backends.device import BLEDevice

from drivers.base import DriverStats, Sink, put_until_accepted
from drivers.ble.config import BleDriverConfig
from drivers.ble.filters import AdvertFilter, Heard, bump, from_bleak
from drivers.ble.gatt_client import GattPoller
from drivers.ble.scanner import AdapterScanner
from gateway.logs import RateLimitedLog
from gateway.model import Reading

log = structlog.get_logger("drivers.ble")

_INBOX_LIMIT = 10_000


class BleSource:
    """A `type: ble` driver instance."""

    def __init__(self, config: BleDriverConfig, gateway_id: str, sink: Sink) -> None:
        self.name = config.name
        self.config = config
        self.stats = DriverStats(type="ble")
        self._sink = sink
        self._heard: list[Heard] = []
        self._readings: list[Reading] = []
        self._arrived = asyncio.Event()
        self._rate_limited = RateLimitedLog(log)

    async def run(self) -> None:
        self._heard, self._readings = [], []
        intake = AdvertFilter(self.config, self.stats)
        scanner = AdapterScanner(self.config, self.stats, self._on_advert)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(scanner.run())
                for device in self.config.gatt:
                    poller = GattPoller(device, self.name, scanner, self.stats, self._emit)
                    tasks.create_task(poller.run())
                await self._deliver(intake)
        finally:
            self.stats.state = "stopped"

    def _on_advert(self, device: BLEDevice, data: Any) -> None:
        if self._full(len(self._heard)):
            return
        self._heard.append(from_bleak(device.address, data, time.time()))
        self._arrived.set()

    def _emit(self, readings: Sequence[Reading]) -> None:
        if self._full(len(self._readings)):
            return
        self._readings.extend(readings)
        self._arrived.set()

    def _full(self, waiting: int) -> bool:
        """Memory stays bounded while the buffer refuses readings: the excess is counted."""
        if waiting < _INBOX_LIMIT:
            return False
        bump(self.stats, "inbox_overflow")
        self._rate_limited.warning(
            "inbox-overflow",
            "BLE data arrives faster than the buffer takes it; dropping the newest",
            driver=self.name,
            waiting=waiting,
            hint="see the buffer's state in `edge-gateway status` (full disk, max_bytes)",
        )
        return True

    async def _deliver(self, intake: AdvertFilter) -> None:
        """Decode what arrived since the last turn and put it into the buffer in one call."""
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            heard, self._heard = self._heard, []
            readings, self._readings = self._readings, []
            for one in heard:
                reading = intake.reading(one)
                if reading is not None:
                    readings.append(reading)
            if readings:
                await put_until_accepted(
                    self._sink, readings, self.name, self.stats, self._rate_limited
                )
                self.stats.read(len(readings))
