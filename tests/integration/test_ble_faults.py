"""BLE faults end to end: the adapter, bluetoothd and devices misbehave; readings flow again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from ble_harness import ble_site
from edge_gateway_sim.bluez import devices
from edge_gateway_sim.brokers import RabbitMQNode

from gateway.status import format_status, read_status

BTHOME = "A4:C1:38:00:00:01"
ENV = "EE:00:00:00:00:01"
ENV2 = "EE:00:00:00:00:02"
WATCHDOG = """\
    watchdog_s: 1.5
    unhealthy_after: 2
"""
SCANNER = (
    WATCHDOG
    + """\
    devices:
      - {address: A4:C1:38:00:00:01, name: bthome}
"""
)


def _gatt(address: str, name: str) -> str:
    return f"""\
      - address: {address}
        name: {name}
        interval_s: 1
        connect_timeout_s: 5
        reconnect_min_s: 0.5
        reconnect_max_s: 2
        characteristics:
          - {{uuid: 2a6e, notify: true, read: false}}
          - {{uuid: 2a19}}
"""


@pytest.mark.parametrize("fault", ["adapter power cycle", "bluetoothd restart"])
async def test_watchdog_recreates_the_scanner_and_readings_flow_again(
    fault: str, rabbitmq: RabbitMQNode, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fleet = [devices.bthome(BTHOME)]
    async with ble_site(tmp_path, rabbitmq.url, request, fleet, SCANNER) as site:
        await site.wait(lambda: len(site.readings("bthome")) >= 3)
        if fault == "adapter power cycle":
            site.bluez.set_powered(False)
            await asyncio.sleep(1.0)
            site.bluez.set_powered(True)
        else:
            await site.bluez.restart(down_s=1.0)
        back = time.time()
        await site.wait(lambda: len(site.readings("bthome", after=back)) >= 3)
        await site.wait(lambda: site.driver()["counters"].get("scanner_restarts", 0) >= 1, 10)
        status = site.driver()
    print(f"\n[ble {fault}] {len(site.readings('bthome'))} readings; status {status}")
    assert status["state"] == "scanning"


async def test_an_adapter_that_stays_off_is_reported_unhealthy_until_it_recovers(
    rabbitmq: RabbitMQNode, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fleet = [devices.bthome(BTHOME)]
    async with ble_site(tmp_path, rabbitmq.url, request, fleet, SCANNER) as site:
        await site.wait(lambda: len(site.readings("bthome")) >= 2)
        site.bluez.set_powered(False)
        await site.wait(lambda: site.driver()["state"] == "adapter-unhealthy", 20)
        unhealthy = site.driver()
        shown = format_status(read_status(site.state_dir))
        site.bluez.set_powered(True)
        back = time.time()
        await site.wait(lambda: len(site.readings("bthome", after=back)) >= 2)
        await site.wait(lambda: site.driver()["state"] == "scanning", 10)
    print(f"\n[ble unhealthy] status while off: {unhealthy}")
    assert "looks unhealthy" in unhealthy["last_error"]
    assert "driver     radio (ble): adapter-unhealthy" in shown  # what `edge-gateway status` prints


async def test_a_refusing_device_does_not_hold_up_other_devices(
    rabbitmq: RabbitMQNode, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    refusing = devices.environmental(ENV, "refuser")
    refusing.refuses = True
    fleet = [devices.bthome(BTHOME), refusing, devices.environmental(ENV2, "env2")]
    driver = SCANNER + "    gatt:\n" + _gatt(ENV, "refuser") + _gatt(ENV2, "env2")
    async with ble_site(tmp_path, rabbitmq.url, request, fleet, driver) as site:
        await site.wait(lambda: site.bluez.refused >= 2)
        await site.wait(
            lambda: len(site.readings("env2")) >= 5 and len(site.readings("bthome")) >= 5
        )
        await site.wait(lambda: site.driver()["counters"].get("gatt_failures", 0) >= 2, 10)
        status = site.driver()
    print(f"\n[ble refusing] per device {dict(site.per_device())}; status {status}")
    assert "refuser" not in site.per_device()
    assert "le-connection-abort-by-remote" in site.gateway.log.read_text()


async def test_a_characteristic_the_device_lacks_is_reported_and_the_others_are_read(
    rabbitmq: RabbitMQNode, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A wrong UUID in the configuration (2a6d: this device has no pressure) used to end
    every session: reconnects for ever, no readings at all, and a hint about radio range."""
    fleet = [devices.environmental(ENV, "env")]
    driver = WATCHDOG + "    gatt:\n" + _gatt(ENV, "env") + "          - {uuid: 2a6d}\n"
    async with ble_site(tmp_path, rabbitmq.url, request, fleet, driver) as site:
        await site.wait(lambda: len(site.readings("env")) >= 6)
        status = site.driver()
    kinds = {name for r in site.readings("env") for name in r["values"]}
    print(f"\n[ble missing characteristic] connects {site.bluez.connects}; status {status}")
    assert kinds == {"temperature", "battery"}
    assert site.bluez.connects == 1
    assert status["counters"]["gatt_missing"] == 1 and "gatt_failures" not in status["counters"]
    assert "has no characteristic 00002a6d-0000-1000-8000-00805f9b34fb" in status["last_error"]
    assert "GATT device has no such characteristic" in site.gateway.log.read_text()


async def test_a_dropped_connection_is_reconnected_and_notifications_resume(
    rabbitmq: RabbitMQNode, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fleet = [devices.environmental(ENV, "env")]
    driver = WATCHDOG + "    gatt:\n" + _gatt(ENV, "env")

    def notified(after: float = 0.0) -> int:
        return sum(1 for r in site.readings("env", after) if "temperature" in r["values"])

    async with ble_site(tmp_path, rabbitmq.url, request, fleet, driver) as site:
        await site.wait(lambda: notified() >= 3)
        site.bluez.drop_connection(ENV)
        dropped = time.time()
        await site.wait(lambda: site.bluez.connects >= 2)
        await site.wait(lambda: notified(dropped + 0.2) >= 3)
        await site.wait(lambda: site.driver()["counters"]["gatt_connects"] >= 2, 10)
        status = site.driver()
    print(f"\n[ble dropped] connects {site.bluez.connects}; status {status}")


async def test_devices_out_of_range_come_back_and_are_read_again(
    rabbitmq: RabbitMQNode, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fleet = [devices.bthome(BTHOME), devices.environmental(ENV, "env")]
    driver = SCANNER + "    gatt:\n" + _gatt(ENV, "env")
    async with ble_site(tmp_path, rabbitmq.url, request, fleet, driver) as site:
        await site.wait(
            lambda: len(site.readings("bthome")) >= 2 and len(site.readings("env")) >= 2
        )
        for address in (BTHOME, ENV):
            site.bluez.set_in_range(address, False)
        await asyncio.sleep(3)
        for address in (BTHOME, ENV):
            site.bluez.set_in_range(address, True)
        back = time.time()
        await site.wait(
            lambda: len(site.readings("bthome", back)) >= 2 and len(site.readings("env", back)) >= 2
        )
    print(f"\n[ble out of range] per device {dict(site.per_device())}")
