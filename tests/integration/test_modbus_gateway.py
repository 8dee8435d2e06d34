"""End to end: the simulated Modbus meter bus (edge-gateway-sim serial, its own process, on a
pty) -> the gateway process (pymodbus, buffer, publisher) -> RabbitMQ -> a counting consumer."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_gateway_sim.brokers import RabbitMQNode
from edge_gateway_sim.consumer import ReadingCollector
from edge_gateway_sim.gateway_process import GatewayProcess
from harness import report_after_now, validate_message, write_gateway_yaml
from test_modbus_source import REGISTERS

INTERVAL_S = 0.5


def _gateway_config(tmp_path: Path, rabbit: RabbitMQNode, exchange: str, units: list[int]) -> Path:
    unit_items = "".join(
        f"""\
    - unit_id: {i}
      device: meter-{i}
      poll_interval_s: {INTERVAL_S}
      timeout_s: 0.15
      retries: 1
      max_backoff_s: 4
      registers: {json.dumps(REGISTERS)}
"""
        for i in units
    )
    driver = f"""\
  - type: serial
    protocol: modbus-rtu
    name: rs485
    port: {tmp_path / "dev" / "meter"}
    baudrate: 19200
    units:
{unit_items}"""
    return write_gateway_yaml(tmp_path, rabbit.url, exchange, driver, "logging: {format: json}\n")


@contextmanager
def simulator(tmp_path: Path, options: dict[str, Any], faults: list[Any]) -> Iterator[Path]:
    """`edge-gateway-sim serial` with the meter bus in its own process; yields its stats file."""
    scenario = tmp_path / "scenario.json"
    device = {"name": "meter", "path": "dev/meter", "model": "modbus-meter", "options": options}
    scenario.write_text(json.dumps({"seed": 3, "devices": [device], "faults": faults}))
    stats = tmp_path / "sim-stats.json"
    with stats.open("wb") as out, (tmp_path / "sim.log").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_gateway_sim.cli", "serial", "--scenario", str(scenario)],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not (tmp_path / "dev" / "meter").exists():
                assert process.poll() is None, (tmp_path / "sim.log").read_text()
                assert time.monotonic() < deadline, "simulator did not make its pty"
                time.sleep(0.05)
            yield stats
        finally:
            process.terminate()
            process.wait(10)


def _per_device(collector: ReadingCollector) -> Counter[str]:
    return Counter(reading["device"] for reading in collector.received.kept)


async def test_a_silent_unit_costs_the_live_units_no_readings_end_to_end(
    rabbitmq: RabbitMQNode, tmp_path: Path
) -> None:
    """Over N poll intervals, each live unit delivers about N readings at the consumer; the
    silent unit none, and it is reported in `edge-gateway status`."""
    exchange = "modbus-silent"
    config = _gateway_config(tmp_path, rabbitmq, exchange, [1, 2, 3])
    intervals = 20
    async with ReadingCollector(
        rabbitmq.url, exchange, queue=exchange, validate=validate_message, keep_readings=True
    ) as collector:
        with (
            simulator(tmp_path, {"units": [1, 2, 3], "silent": [2]}, []),
            GatewayProcess(config, tmp_path / "gateway.log", mqtt=False) as gateway,
        ):
            gateway.start()
            assert await collector.wait_until(
                lambda _: min(_per_device(collector)[f"meter-{i}"] for i in (1, 3)) >= 2,
                timeout=20,
            ), gateway.log_tail()
            before = _per_device(collector)
            await asyncio.sleep(intervals * INTERVAL_S)
            after = _per_device(collector)
            driver = (await report_after_now(tmp_path / "state"))["drivers"]["rs485"]
            assert gateway.terminate() == 0
    delivered = {device: after[device] - before[device] for device in after}
    print(f"\n[modbus e2e] over {intervals} intervals: {dict(sorted(delivered.items()))}")
    assert collector.received.invalid == []
    assert "meter-2" not in after
    for device in ("meter-1", "meter-3"):
        assert 0.8 * intervals <= delivered[device] <= 1.2 * intervals + 2, delivered
    reading = next(r for r in collector.received.kept if r["device"] == "meter-3")
    assert reading["values"]["voltage"] == 230.3
    assert reading["values"]["frequency"] == 50.0
    assert reading["units"]["energy"] == "Wh"
    assert driver["counters"]["no_response"] >= 2
    assert driver["last_error"] == "unit 2 (meter-2) does not answer"


async def test_noise_and_an_unplugged_meter_are_counted_and_cost_no_good_reading(
    rabbitmq: RabbitMQNode, tmp_path: Path
) -> None:
    exchange = "modbus-faults"
    config = _gateway_config(tmp_path, rabbitmq, exchange, [1, 2])
    faults = [
        {"at_s": 3, "device": "meter", "fault": "noise", "bytes": 40},
        {"at_s": 4, "device": "meter", "fault": "unplug", "duration_s": 3},
    ]
    async with ReadingCollector(
        rabbitmq.url, exchange, queue=exchange, validate=validate_message, keep_readings=True
    ) as collector:
        with (
            simulator(tmp_path, {"units": [1, 2], "damage": 0.2}, faults),
            GatewayProcess(config, tmp_path / "gateway.log", mqtt=False) as gateway,
        ):
            gateway.start()
            await asyncio.sleep(9)  # the unplug ends at about 7 s
            count = collector.received.unique
            assert await collector.wait_until(lambda got: got.unique >= count + 4, timeout=10)
            driver = (await report_after_now(tmp_path / "state"))["drivers"]["rs485"]
            assert gateway.terminate() == 0
    log = (tmp_path / "gateway.log").read_text()
    print(f"\n[modbus faults] readings={collector.received.unique} counters={driver['counters']}")
    assert collector.received.invalid == []
    for reading in collector.received.kept:
        unit = int(reading["device"].removeprefix("meter-"))
        assert reading["values"]["voltage"] == 230 + unit / 10
        assert len(reading["values"]) == 6
    counters = driver["counters"]
    assert counters.get("garbage", 0) + counters.get("bad_crc", 0) >= 1
    assert counters.get("short_frame", 0) >= 1
    assert driver["malformed"] >= 3
    assert log.count("serial device went away; waiting for it to come back") == 1
    assert log.count('"polling Modbus units"') == 2
