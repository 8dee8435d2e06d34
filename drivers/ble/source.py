"""The `type: ble` driver: one adapter's scanner, its GATT devices, and one way into the buffer.

bleak's callbacks (advertisements, notifications) only record what arrived; decoding and
putting happen in the driver's own task, so a decoder exception is counted and logged
here rather than swallowed by bleak's callback wrapper. A device cannot be asked to send
again, so readings the buffer refuses are held in the driver's `outbox` and retried; the
outbox outlives the driver's task (a restart, a reload, a stop: see `Outbox`). While they
wait, at most `_INBOX_LIMIT` readings (and as many advertisements not yet decoded) queue
up; the excess is counted (`inbox_overflow`) and logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import structlog
from bleak.backends.device import BLEDevice

from drivers.base import DriverStats, Outbox, Sink
from drivers.ble.config import BleDriverConfig
from drivers.ble.filters import AdvertFilter, Heard, from_bleak
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
        self._heard: list[Heard] = []
        self._arrived = asyncio.Event()
        self._rate_limited = RateLimitedLog(log)
        self.outbox = Outbox(_INBOX_LIMIT, sink, self.name, self.stats, self._rate_limited)

    async def run(self) -> None:
        # What waits in `_heard` and `outbox` outlives a restart (a failing scanner or GATT
        # poller): it was received, and it is still put.
        await self.outbox.deliver_while(self._listen)

    async def _listen(self) -> None:
        """The adapter's scanner and GATT pollers, and decoding what they deliver."""
        intake = AdvertFilter(self.config, self.stats)
        scanner = AdapterScanner(self.config, self.stats, self._on_advert)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(scanner.run())
            for device in self.config.gatt:
                poller = GattPoller(device, self.name, scanner, self.stats, self._emit)
                tasks.create_task(poller.run())
            await self._decode_forever(intake)

    def _on_advert(self, device: BLEDevice, data: Any) -> None:
        if len(self._heard) >= _INBOX_LIMIT:
            self._overflow(len(self._heard), dropped=1)
            return
        self._heard.append(from_bleak(device.address, data, time.time()))
        self._arrived.set()

    def _emit(self, readings: Sequence[Reading]) -> None:
        if not self.outbox.add(readings):
            self._overflow(len(self.outbox), dropped=len(readings))

    def _overflow(self, waiting: int, dropped: int) -> None:
        """Memory stays bounded while the buffer refuses readings: the excess is counted, one
        per advertisement or reading dropped."""
        self.stats.bump("inbox_overflow", dropped)
        self._rate_limited.warning(
            "inbox-overflow",
            "BLE data arrives faster than the buffer takes it; dropping the newest",
            driver=self.name,
            waiting=waiting,
            hint="see the buffer's state in `edge-gateway status` (full disk, max_bytes)",
        )

    async def _decode_forever(self, intake: AdvertFilter) -> None:
        """Decode advertisements as they arrive, into the outbox; the rest too when cancelled."""
        try:
            while True:
                await self._arrived.wait()
                self._arrived.clear()
                self._decode(intake)
        finally:
            self._decode(intake)

    def _decode(self, intake: AdvertFilter) -> None:
        heard, self._heard = self._heard, []
        readings = [r for r in map(intake.reading, heard) if r is not None]
        if not self.outbox.add(readings):
            self._overflow(len(self.outbox), dropped=len(readings))
