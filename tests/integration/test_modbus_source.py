"""The Modbus RTU driver against the simulated meter on a real pseudo-terminal, in-process.

The driver runs with a list as its sink (the buffer and the broker are tested elsewhere and
end to end in test_modbus_gateway.py); between it and the simulator (serial_sim running the
`modbus-meter` model) are pymodbus and a real pty.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from edge_gateway_sim.modbus_meter import ModbusMeter
from edge_gateway_sim.serial_sim.scenario import parse_scenario
from edge_gateway_sim.serial_sim.sim import SerialSim, SimDevice
from structlog.testing import capture_logs

from drivers.serial.modbus import ModbusSource
from drivers.serial.modbus_config import ModbusRtuConfig
from gateway.errors import BufferFull
from gateway.model import Reading

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def documented_registers() -> list[dict[str, Any]]:
    """The register map of the worked example in docs/configuration.md: the simulated meter
    serves exactly that map, so the tests check the example too."""
    section = DOCS.read_text().split("#### Modbus RTU")[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    registers: list[dict[str, Any]] = yaml.safe_load(example[1])[0]["units"][0]["registers"]
    return registers


REGISTERS = documented_registers()


def bus_config(link: Path, unit_ids: Sequence[int], **unit: Any) -> ModbusRtuConfig:
    timing = {"poll_interval_s": 0.2, "timeout_s": 0.1, "retries": 1, "max_backoff_s": 1.0}
    return ModbusRtuConfig.model_validate(
        {
            "type": "serial",
            "protocol": "modbus-rtu",
            "name": "rs485",
            "port": str(link),
            "baudrate": 19200,
            "units": [
                {"unit_id": i, "device": f"meter-{i}", "registers": REGISTERS, **timing, **unit}
                for i in unit_ids
            ],
        }
    )


class ListSink:
    """Keeps what it is given; refuses the first `refuse` puts as a full buffer would."""

    def __init__(self, refuse: int = 0) -> None:
        self.readings: list[Reading] = []
        self.refused: list[Reading] = []
        self.refuse = refuse
        self.arrived = asyncio.Event()

    async def put(self, readings: Sequence[Reading]) -> None:
        if self.refuse:
            self.refuse -= 1
            self.refused.extend(readings)
            self.arrived.set()
            raise BufferFull("buffer full (test)")
        self.readings.extend(readings)
        self.arrived.set()

    def per_device(self) -> Counter[str]:
        return Counter(reading.device for reading in self.readings)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(10.0):
            while not predicate():
                self.arrived.clear()
                await self.arrived.wait()


@asynccontextmanager
async def meter_bus(
    tmp_path: Path, plugged: bool = True, **options: Any
) -> AsyncIterator[tuple[SimDevice, ModbusMeter]]:
    """The simulated meter bus on a pty at tmp_path/meter, as `edge-gateway-sim serial` runs it."""
    scenario = parse_scenario(
        {
            "seed": 7,
            "devices": [
                {
                    "name": "meter",
                    "path": "meter",
                    "model": "modbus-meter",
                    "plugged": plugged,
                    "options": options,
                }
            ],
        },
        tmp_path,
    )
    async with SerialSim(scenario) as sim:
        device = sim.devices["meter"]
        assert isinstance(device.model, ModbusMeter)
        yield device, device.model


@asynccontextmanager
async def running(source: ModbusSource) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run())
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_every_unit_is_read_and_decoded_as_its_register_map_says(tmp_path: Path) -> None:
    link = tmp_path / "meter"
    sink = ListSink()
    async with meter_bus(tmp_path, units=[1, 2]):
        source = ModbusSource(bus_config(link, [1, 2]), "gw", sink)
        async with running(source):
            await sink.wait_for(lambda: min(sink.per_device()[f"meter-{i}"] for i in (1, 2)) >= 2)
    first = {r.device: r for r in reversed(sink.readings)}
    for i in (1, 2):
        reading = first[f"meter-{i}"]
        values = dict(reading.values)
        assert 1000 * i <= int(values.pop("energy")) < 1000 * i + 100
        assert values == {
            "voltage": 230 + i / 10,
            "current": 5.0 + i,
            "power_factor": -0.95,
            "frequency": 50.0,
            "relay": True,
        }
        assert reading.units == {"voltage": "V", "current": "A", "energy": "Wh", "frequency": "Hz"}
        assert reading.source == "rs485"
    assert source.stats.counters == {}


async def test_a_silent_unit_does_not_stall_the_others(tmp_path: Path) -> None:
    """Over N poll intervals the live units deliver about N readings each; the dead one is
    backed off, so it is asked far less often than once per interval."""
    link = tmp_path / "meter"
    sink = ListSink()
    seconds, interval = 4.0, 0.2
    async with meter_bus(tmp_path, units=[1, 2, 3], silent=[2]):
        source = ModbusSource(bus_config(link, [1, 2, 3]), "gw", sink)
        async with running(source):
            await asyncio.sleep(seconds)
    counts = sink.per_device()
    polls = seconds / interval  # 20
    assert counts["meter-2"] == 0
    assert counts["meter-1"] >= 0.8 * polls and counts["meter-3"] >= 0.8 * polls, counts
    # Without backoff: 20 polls x 2 attempts = 40 unanswered requests.
    assert 2 <= source.stats.counters["no_response"] <= 16
    assert source.stats.last_error == "unit 2 (meter-2) does not answer"


async def test_a_unit_that_stops_answering_resumes_by_itself(tmp_path: Path) -> None:
    link = tmp_path / "meter"
    sink = ListSink()
    async with meter_bus(tmp_path, units=[1, 2]) as (_, meter):
        source = ModbusSource(bus_config(link, [1, 2]), "gw", sink)
        with capture_logs() as logs:
            async with running(source):
                await sink.wait_for(lambda: sink.per_device()["meter-2"] >= 2)
                meter.silent.add(2)
                await asyncio.sleep(1.5)
                before = sink.per_device()
                meter.silent.clear()
                await sink.wait_for(lambda: sink.per_device()["meter-2"] > before["meter-2"])
    assert sink.per_device()["meter-1"] > before["meter-1"]
    events = [entry["event"] for entry in logs]
    assert events.count("Modbus unit does not answer; polling it less often until it does") == 1
    assert events.count("Modbus unit answers again") == 1


async def test_unplugged_meter_is_logged_once_and_resumes_when_plugged_back(
    tmp_path: Path,
) -> None:
    link = tmp_path / "meter"
    sink = ListSink()
    source = ModbusSource(bus_config(link, [1]), "gw", sink)
    with capture_logs() as logs:
        async with meter_bus(tmp_path, plugged=False, units=[1]) as (device, _), running(source):
            await asyncio.sleep(1.0)  # absent at start-up
            assert source.stats.state == "waiting for device"
            device.plug()
            await sink.wait_for(lambda: len(sink.readings) >= 2)
            device.unplug()
            await asyncio.sleep(2.0)
            assert source.stats.state == "waiting for device"
            unplugged = len(sink.readings)
            device.plug()
            await sink.wait_for(lambda: len(sink.readings) >= unplugged + 2)
    events = [entry["event"] for entry in logs]
    assert events.count("serial device not present; waiting for it to be plugged in") == 1
    assert events.count("serial device went away; waiting for it to come back") == 1
    assert events.count("polling Modbus units") == 2


async def test_a_port_lost_each_time_it_opens_is_retried_ever_more_slowly(tmp_path: Path) -> None:
    """A flapping adapter (a loose USB cable) must not be reopened in a tight loop."""
    link = tmp_path / "meter"
    source = ModbusSource(bus_config(link, [1]), "gw", ListSink())
    opens = 0

    async def pull_the_cable_whenever_it_polls(device: SimDevice, logs: list[Any]) -> None:
        nonlocal opens
        while True:
            await asyncio.sleep(0.005)
            sessions = sum(entry["event"] == "polling Modbus units" for entry in logs)
            if sessions > opens:
                opens = sessions
                device.unplug()
                device.plug()

    with capture_logs() as logs:
        async with meter_bus(tmp_path, units=[1]) as (device, _), running(source):
            flapper = asyncio.create_task(pull_the_cable_whenever_it_polls(device, logs))
            await asyncio.sleep(4.0)
            flapper.cancel()
    # Backoff from 0.5 s doubling, jitter 0.5..1: pauses of at least 0.25, 0.5, 1 and 2 s
    # leave room for at most 4 sessions in 4 s; reopening at once made ~600 of them.
    assert 2 <= opens <= 4


async def test_line_noise_is_counted_per_kind_and_costs_no_good_reading(tmp_path: Path) -> None:
    link = tmp_path / "meter"
    sink = ListSink()
    async with meter_bus(tmp_path, units=[1, 2], damage=0.3) as (_, meter):
        source = ModbusSource(bus_config(link, [1, 2], retries=2), "gw", sink)
        with capture_logs() as logs:
            async with running(source):
                await sink.wait_for(lambda: len(sink.readings) >= 30 and meter.damaged >= 9)
    counters = source.stats.counters
    assert counters["garbage"] >= 3 and counters["bad_crc"] >= 3 and counters["short_frame"] >= 3
    # Every damaged answer is counted once, but for the one in flight when the test stopped.
    counted = counters["garbage"] + counters["bad_crc"] + counters["short_frame"]
    assert meter.damaged - 1 <= counted <= meter.damaged
    assert source.stats.malformed == counted
    for reading in sink.readings:  # every reading is whole and right
        assert reading.values["voltage"] == 230 + int(reading.device[-1]) / 10
        assert len(reading.values) == 6
    samples = [entry["sample"] for entry in logs if entry["event"].startswith("bad bytes")]
    assert samples and all(isinstance(sample, str) and sample for sample in samples)


async def test_readings_the_buffer_refuses_are_held_and_put_again(tmp_path: Path) -> None:
    link = tmp_path / "meter"
    sink = ListSink(refuse=2)
    started = time.time()
    async with meter_bus(tmp_path, units=[1]):
        source = ModbusSource(bus_config(link, [1]), "gw", sink)
        async with running(source):
            await sink.wait_for(lambda: len(sink.readings) >= 3)
    first = min(sink.readings, key=lambda reading: reading.ts)
    assert first.values["energy"] == 1000 + 1  # the first poll (its coil read came first)
    assert first.ts.timestamp() - started < 1.0
    assert source.stats.last_error == "buffer full (test)"


async def test_readings_held_when_the_driver_is_cancelled_are_put_by_its_next_run(
    tmp_path: Path,
) -> None:
    """A reload or a supervisor restart cancels the driver mid-put: its outbox keeps them."""
    link = tmp_path / "meter"
    sink = ListSink(refuse=1_000_000)
    async with meter_bus(tmp_path, units=[1]):
        source = ModbusSource(bus_config(link, [1]), "gw", sink)
        async with running(source):
            await sink.wait_for(lambda: len(sink.refused) >= 2)
        held = list(sink.refused)
        sink.refuse = 0
        async with running(source):
            await sink.wait_for(lambda: source.stats.state == "polling" and len(sink.readings) > 1)
        assert all(reading in sink.readings for reading in held)


async def test_a_refused_read_is_counted_and_the_rest_of_the_reading_kept(tmp_path: Path) -> None:
    """The warning names the block; for 40001, a register map's numbering written as an
    address, it says what to write instead."""
    link = tmp_path / "meter"
    sink = ListSink()
    config = bus_config(link, [1]).model_dump()
    config["units"][0]["registers"].append({"name": "map", "address": 40001, "type": "int16"})
    async with meter_bus(tmp_path, units=[1]):
        source = ModbusSource(ModbusRtuConfig.model_validate(config), "gw", sink)
        with capture_logs() as logs:
            async with running(source):
                await sink.wait_for(lambda: len(sink.readings) >= 2)
    assert set(sink.readings[0].values) == {str(r["name"]) for r in REGISTERS}
    assert source.stats.counters["exception_response"] >= 2
    assert "no_response" not in source.stats.counters
    [refused] = [e for e in logs if e["event"].startswith("Modbus unit refused")]  # per 10 s
    assert refused["numbering"] == (
        "if the map's 40001 means holding register 0, write kind: holding, address: 0"
    )


async def test_noise_between_requests_is_counted_with_a_sample(tmp_path: Path) -> None:
    """A wrong baud rate or a noisy line sends bytes nobody asked for: each burst is counted
    (at the next request) and logged with its bytes, and the readings stay whole."""
    link = tmp_path / "meter"
    sink = ListSink()
    async with meter_bus(tmp_path, units=[1]) as (device, _):
        source = ModbusSource(bus_config(link, [1], poll_interval_s=1.0), "gw", sink)
        with capture_logs() as logs:
            async with running(source):
                await sink.wait_for(lambda: len(sink.readings) >= 1)
                for _ in range(3):
                    await asyncio.sleep(0.5)  # between two polls
                    await device.noise(40)
                    await asyncio.sleep(0.6)
                await sink.wait_for(lambda: len(sink.readings) >= 4)
    assert source.stats.counters["garbage"] == 3
    assert source.stats.malformed == 3
    samples = [e["sample"] for e in logs if e["event"].startswith("bad bytes on the Modbus")]
    assert samples and len(samples[0].split()) == 41  # 40 noise bytes and the delimiter
    assert all(reading.values["voltage"] == 230.1 for reading in sink.readings)


async def test_a_late_answer_is_counted_and_never_taken_for_the_next_request(
    tmp_path: Path,
) -> None:
    """An RTU answer does not say which request it answers. Unit 1 answers 150 ms after each
    request, past its 100 ms timeout; its two blocks have the same size, so its late answer
    to the first would pass for an answer to the second (voltage's words stored as energy),
    and coming while unit 2 is asked, it looked like line noise. Unit 2 answers at once."""
    link = tmp_path / "meter"
    sink = ListSink()
    registers = [r for r in REGISTERS if r["name"] in ("voltage", "energy")]  # 0-1 and 4-5
    async with meter_bus(tmp_path, units=[1, 2], late={1: 0.15}):
        source = ModbusSource(bus_config(link, [1, 2], registers=registers), "gw", sink)
        async with running(source):
            await sink.wait_for(lambda: sink.per_device()["meter-2"] >= 6)
    counters = source.stats.counters
    assert counters["late_answer"] >= 2, counters
    assert "garbage" not in counters and source.stats.malformed == 0, counters
    assert sink.per_device()["meter-1"] == 0  # every answer of unit 1 is late: none taken
    for reading in sink.readings:
        assert reading.values["voltage"] == 230.2, reading
        assert 2000 <= int(reading.values["energy"]) < 2100, reading


async def test_a_port_that_is_not_a_serial_port_is_reported_not_crashed_on(
    tmp_path: Path,
) -> None:
    not_a_tty = tmp_path / "meter"
    not_a_tty.write_bytes(b"")
    source = ModbusSource(bus_config(not_a_tty, [1]), "gw", ListSink())
    async with running(source) as task:
        await asyncio.sleep(1.0)
        assert not task.done()
    assert source.stats.last_error == f"{not_a_tty} is not a serial port (not a tty); check `port`"


async def test_a_driver_cancelled_mid_request_stops_at_once(tmp_path: Path) -> None:
    """Shutdown must not wait for a unit that does not answer (nor carry on polling: before
    3.16, pymodbus turned the cancellation of a request into an error of its own)."""
    link = tmp_path / "meter"
    async with meter_bus(tmp_path, units=[1], silent=[1]):
        source = ModbusSource(bus_config(link, [1], timeout_s=5.0), "gw", ListSink())
        task = asyncio.create_task(source.run())
        await asyncio.sleep(1.0)  # polling unit 1, waiting up to 5 s for its answer
        assert source.stats.state == "polling"
        task.cancel()
        async with asyncio.timeout(1.0):
            with pytest.raises(asyncio.CancelledError):
                await task
    assert source.stats.state == "stopped"


async def test_a_driver_cancelled_as_it_connects_stops(tmp_path: Path) -> None:
    """pymodbus opens the port in asyncio.wait_for, which can drop that cancel (Python 3.11)."""
    async with meter_bus(tmp_path, units=[1]):
        source = ModbusSource(bus_config(tmp_path / "meter", [1]), "gw", ListSink())
        for _ in range(5):
            task = asyncio.create_task(source.run())
            await asyncio.sleep(0)
            task.cancel()
            async with asyncio.timeout(5):
                await asyncio.gather(task, return_exceptions=True)
            assert task.cancelled()


async def test_a_cancel_that_comes_as_an_answer_arrives_stops_the_driver(tmp_path: Path) -> None:
    """pymodbus waits for an answer in `asyncio.wait_for`, which on Python 3.11 drops a
    cancel that comes as the answer completes: the driver polled on, and the reload that
    cancelled it waited for ever (a chaos soak). The cancel here comes from inside
    pymodbus's receive path, with the answer's last bytes."""
    async with meter_bus(tmp_path, units=[1]):
        for _ in range(5):
            task = await _cancelled_as_an_answer_arrives(tmp_path / "meter")
            done, _ = await asyncio.wait([task], timeout=5)
            assert done and task.cancelled(), f"still polling, cancelling()={task.cancelling()}"


async def _cancelled_as_an_answer_arrives(link: Path) -> asyncio.Task[None]:
    """A polling driver's task, cancelled from pymodbus's receive path once it has read."""
    sink = ListSink()
    source = ModbusSource(bus_config(link, [1], poll_interval_s=0.05), "gw", sink)
    receive, armed = source._trace.packet, asyncio.Event()

    def cancel_on_an_answer(sending: bool, data: bytes) -> bytes:
        if armed.is_set() and not sending and len(data) >= 5:
            armed.clear()
            task.cancel()
        return receive(sending, data)

    source._trace.packet = cancel_on_an_answer  # type: ignore[method-assign]
    task = asyncio.create_task(source.run())
    await sink.wait_for(lambda: len(sink.readings) >= 2)
    armed.set()
    return task
