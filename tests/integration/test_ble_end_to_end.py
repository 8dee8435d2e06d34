"""Each simulated BLE device type, through bleak, the gateway and RabbitMQ, with bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from ble_harness import ble_site
from edge_gateway_sim.bluez import devices
from edge_gateway_sim.brokers import RabbitMQNode

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
GATT = """\
    gatt:
      - address: EE:00:00:00:00:01
        name: env
        interval_s: 1
        reconnect_min_s: 0.5
        characteristics:
          - {uuid: 2a6e, notify: true, read: false}
          - {uuid: 2a6f}
          - {uuid: 2a19}
"""


async def test_every_device_type_arrives_decoded_and_malformed_adverts_are_counted(
    rabbitmq: RabbitMQNode, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fleet = [
        devices.bthome("A4:C1:38:00:00:01"),
        devices.bthome("A4:C1:38:00:00:02", "bthome-enc", bindkey=KEY),
        devices.ruuvi("C7:11:22:33:44:55"),
        devices.pvvx("A4:C1:38:00:00:03"),
        devices.environmental("EE:00:00:00:00:01"),
        devices.malformed("A4:C1:38:00:00:04"),
    ]
    driver = f"""\
    rssi: true
    devices:
      - {{address: A4:C1:38:00:00:01, name: bthome}}
      - {{address: a4:c1:38:00:00:02, name: bthome-enc, bindkey: {KEY.hex()}}}
      - {{address: C7:11:22:33:44:55, name: ruuvi}}
      - {{address: A4:C1:38:00:00:03, name: pvvx}}
      - {{address: A4:C1:38:00:00:04, name: broken}}
{GATT}"""
    names = ("bthome", "bthome-enc", "ruuvi", "pvvx", "env", "broken")
    async with ble_site(tmp_path, rabbitmq.url, request, fleet, driver) as site:
        await site.wait(lambda: all(site.per_device()[n] >= 4 for n in names))
        await site.wait(lambda: site.driver()["malformed"] >= 2, within=10)
        status = site.driver()
    counts = site.per_device()
    print(f"\n[ble e2e] readings per device {dict(counts)}; driver status {status}")
    assert set(counts) == set(names)  # nothing from elsewhere, no address-named strays
    for name in ("bthome", "bthome-enc", "ruuvi", "pvvx"):
        for reading in site.readings(name):
            assert reading["units"]["temperature"] == "Cel"
            assert reading["values"]["rssi"] < 0 and reading["units"]["rssi"] == "dBm"
            temperature = reading["values"]["temperature"]
            assert 20 <= temperature < 30 and round(temperature * 10) == temperature * 10
    assert {r["tags"]["format"] for r in site.readings("ruuvi")} == {"ruuvi"}
    assert site.readings("ruuvi")[0]["values"]["pressure"] == 1013.25
    env = site.readings("env")
    notified = [r for r in env if set(r["values"]) == {"temperature"}]
    polled = [r for r in env if set(r["values"]) == {"humidity", "battery"}]
    assert notified and polled
    assert polled[0]["values"] == {"humidity": 55.5, "battery": 77}
    assert polled[0]["units"] == {"humidity": "%RH", "battery": "%"}
    # The broken device's good packets (odd numbers) arrive; the bad ones are counted.
    assert all(r["values"]["temperature"] * 10 % 2 == 1 for r in site.readings("broken"))
    assert status["malformed"] >= 2
    assert status["state"] == "scanning"
    assert "malformed BLE advertisement; skipped" in site.gateway.log.read_text()


async def test_passive_scanning_through_an_advertisement_monitor_delivers_readings(
    rabbitmq: RabbitMQNode, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fleet = [devices.pvvx("A4:C1:38:00:00:03")]
    driver = "    scanning: passive\n    allow: {addresses: [A4:C1:38:00:00:03]}\n"
    async with ble_site(tmp_path, rabbitmq.url, request, fleet, driver) as site:
        await site.wait(lambda: len(site.readings("A4:C1:38:00:00:03")) >= 3)
    assert site.readings()[0]["tags"] == {"address": "A4:C1:38:00:00:03", "format": "pvvx"}
