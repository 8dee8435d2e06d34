"""Every BLE D-Bus call has a deadline: a bluetoothd that never answers is timed out, counted
and retried with backoff, and data flows again once it answers. The scanner's watchdog tells
a dead scan from a quiet one."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from ble_harness import fake_radio
from edge_gateway_sim.bluez import devices
from harness import until

from drivers.base import DriverStats
from drivers.ble.config import BleDriverConfig
from drivers.ble.gatt_client import GattPoller
from drivers.ble.scanner import AdapterScanner
from gateway.model import Reading

BTHOME = "A4:C1:38:00:00:01"
ENV = "EE:00:00:00:00:01"


@pytest.mark.parametrize("bluetoothd", ["answers late", "restarts"])
async def test_a_scan_start_without_an_answer_is_reported_and_scanning_follows_the_answer(
    monkeypatch: pytest.MonkeyPatch, bluetoothd: str
) -> None:
    # A start that BlueZ answers late opens a discovery session: had the scanner given up
    # on it and started again, every later start would fail with InProgress for good.
    monkeypatch.setattr("drivers.ble.scanner._START_TIMEOUT_S", 0.5)
    config = BleDriverConfig(type="ble", name="radio", devices=[{"address": BTHOME}])
    stats = DriverStats(type="ble")
    heard: list[str] = []
    scanner = AdapterScanner(config, stats, lambda device, _data: heard.append(device.address))
    async with fake_radio(monkeypatch, [devices.bthome(BTHOME)]) as bluez:
        bluez.stalled.add("StartDiscovery")
        async with asyncio.TaskGroup() as tasks:
            scanning = tasks.create_task(scanner.run())
            await until("a start timeout", lambda: stats.counters.get("scan_start_timeouts"))
            assert stats.last_error == (
                "starting the scan on hci0 got no answer from BlueZ within 0.5 s; "
                "still waiting for it"
            )
            await asyncio.sleep(1.5)  # a retry would have come by now
            assert not heard
            if bluetoothd == "answers late":
                bluez.answer_stalled()
            else:
                bluez.stalled.clear()
                await bluez.restart(down_s=0.2)
            await until("an advertisement", lambda: BTHOME in heard)
            heard_before = len(heard)
            await until("more advertisements", lambda: len(heard) >= heard_before + 3)
            scanning.cancel()
    assert stats.counters["scan_start_timeouts"] == 1
    assert stats.state == "scanning"


async def test_a_start_notify_without_an_answer_times_out_and_the_device_is_reconnected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gatt: dict[str, Any] = {
        "address": ENV,
        "name": "env",
        "connect_timeout_s": 2,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 0.5,
        "characteristics": [{"uuid": "2a6e", "notify": True, "read": False}],
    }
    config = BleDriverConfig(type="ble", name="radio", gatt=[gatt])
    stats = DriverStats(type="ble")
    readings: list[Reading] = []
    scanner = AdapterScanner(config, stats, lambda _device, _data: None)
    poller = GattPoller(config.gatt[0], "radio", scanner, stats, readings.extend)
    async with fake_radio(monkeypatch, [devices.environmental(ENV, "env")]) as bluez:
        bluez.stalled.add("StartNotify")
        async with asyncio.TaskGroup() as tasks:
            running = [tasks.create_task(scanner.run()), tasks.create_task(poller.run())]
            await until(
                "a timeout, then a reconnect",
                lambda: stats.counters.get("gatt_timeouts", 0) >= 1 and bluez.connects >= 2,
            )
            assert not readings
            bluez.stalled.clear()
            await until("a notification", lambda: any("temperature" in r.values for r in readings))
            for task in running:
                task.cancel()
    assert stats.counters["gatt_failures"] >= 1
    assert stats.last_error is not None
    assert "StartNotify 00002a6e-0000-1000-8000-00805f9b34fb got no answer within 2 s" in (
        stats.last_error
    )


async def test_a_site_whose_gatt_devices_are_connected_and_quiet_is_healthy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Most peripherals stop advertising while connected: with only GATT devices configured
    that silence is no dead scan (the watchdog recreated the scanner every watchdog_s and
    reported the adapter unhealthy while readings flowed)."""
    gatt: dict[str, Any] = {
        "address": ENV,
        "name": "env",
        "interval_s": 0.5,
        "characteristics": [{"uuid": "2a19"}],
    }
    config = BleDriverConfig(
        type="ble", name="radio", gatt=[gatt], watchdog_s=1.0, unhealthy_after=2
    )
    stats = DriverStats(type="ble")
    readings: list[Reading] = []
    scanner = AdapterScanner(config, stats, lambda _device, _data: None)
    poller = GattPoller(config.gatt[0], "radio", scanner, stats, readings.extend)
    quiet = replace(devices.environmental(ENV, "env"), quiet_when_connected=True)
    async with fake_radio(monkeypatch, [quiet]):
        async with asyncio.TaskGroup() as tasks:
            running = [tasks.create_task(scanner.run()), tasks.create_task(poller.run())]
            await until("connected and reading", lambda: len(readings) >= 2)
            await asyncio.sleep(4 * config.watchdog_s)
            for task in running:
                task.cancel()
    assert stats.state == "scanning"
    assert stats.counters.get("scanner_restarts", 0) == 0
    assert len(readings) >= 6  # it kept reading meanwhile
