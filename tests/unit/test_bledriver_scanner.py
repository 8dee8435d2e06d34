"""One scanner per adapter: a second BLE driver on the same adapter is refused with a reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.base import DriverStats
from drivers.ble.config import BleDriverConfig
from drivers.ble.scanner import AdapterBusy, AdapterScanner


async def test_a_second_scanner_on_one_adapter_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No bus at this address: the first scanner keeps failing to start, never the real bus.
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    config = BleDriverConfig(type="ble", name="one")
    first = AdapterScanner(config, DriverStats(type="ble"), lambda device, data: None)
    running = asyncio.create_task(first.run())
    await asyncio.sleep(0)
    second = AdapterScanner(config, DriverStats(type="ble"), lambda device, data: None)
    with pytest.raises(AdapterBusy, match="hci0 is already used by another ble driver"):
        await second.run()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    other = BleDriverConfig(type="ble", name="two", adapter="hci0")
    third = AdapterScanner(other, DriverStats(type="ble"), lambda device, data: None)
    third_running = asyncio.create_task(third.run())
    await asyncio.sleep(0)
    assert not third_running.done()  # the cancelled scanner released hci0
    third_running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await third_running
