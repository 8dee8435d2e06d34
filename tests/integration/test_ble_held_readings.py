"""What the BLE driver heard but the buffer has not taken yet survives the driver's task.

BleSource in this process against the fake BlueZ, with a sink that refuses as a full
buffer does: a cancel (a reload, a stop, a supervisor restart) while the buffer refuses
keeps the readings in the driver's outbox, and its next run puts them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from ble_harness import fake_radio
from edge_gateway_sim.bluez import devices
from harness import until

from drivers.ble.config import BleDriverConfig
from drivers.ble.source import BleSource
from gateway.errors import BufferFull
from gateway.model import Reading

BTHOME = "A4:C1:38:00:00:01"


class Refusing:
    """Refuses every put, as a full buffer does, until `refuse` is cleared; keeps the rest."""

    def __init__(self) -> None:
        self.refuse = True
        self.refused: list[Reading] = []
        self.taken: list[Reading] = []

    async def put(self, readings: Sequence[Reading]) -> None:
        if self.refuse:
            self.refused.extend(r for r in readings if r not in self.refused)
            raise BufferFull("buffer full (test)")
        self.taken.extend(readings)


async def test_readings_held_when_the_driver_is_cancelled_are_put_by_its_next_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = BleDriverConfig(type="ble", name="radio", devices=[{"address": BTHOME}])
    sink = Refusing()
    source = BleSource(config, "gw", sink)
    async with fake_radio(monkeypatch, [devices.bthome(BTHOME)]):
        running = asyncio.create_task(source.run())
        await until("a reading refused", lambda: len(sink.refused) >= 1)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        held = list(sink.refused)
        sink.refuse = False
        async with asyncio.TaskGroup() as tasks:
            running = tasks.create_task(source.run())
            await until("the held readings put", lambda: all(r in sink.taken for r in held))
            running.cancel()
