"""The serial line driver on real pseudo-terminals (the simulator) with a real buffer.

Each test runs a `SerialLineSource` against simulated devices and reads back what
the buffer stored: what a device sent while the port was open must all be there,
and every kind of bad input is counted exactly.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import serial
from edge_gateway_sim.serial_sim.scenario import parse_scenario
from edge_gateway_sim.serial_sim.sim import SerialSim
from structlog.testing import capture_logs

from drivers.serial import link
from drivers.serial.lines_config import SerialLinesConfig
from drivers.serial.nmea_config import SerialNmeaConfig
from drivers.serial.source import SerialLineSource
from gateway.buffer import Buffer
from gateway.config import GatewayConfig


class Rig:
    """A driver, its buffer and the simulated devices, for one test."""

    def __init__(self, source: SerialLineSource, buffer: Buffer, sim: SerialSim) -> None:
        self.source = source
        self.buffer = buffer
        self.sim = sim

    async def readings(self) -> list[dict[str, Any]]:
        chunks = await self.buffer.fetch(0, 1_000_000)
        return [json.loads(r.body) for chunk in chunks for r in chunk.readings]

    async def seqs(self) -> list[int]:
        return [r["values"]["seq"] for r in await self.readings()]

    async def wait_for(self, what: str, check: Callable[[], Any]) -> None:
        await eventually(f"{what} (driver stats: {self.stats})", check)

    @property
    def stats(self) -> Any:
        return self.source.stats


async def eventually(what: str, check: Callable[[], Any], within_s: float = 20) -> None:
    """Wait until `check()` (a value or a coroutine) is true; a deadline, not a timing claim."""
    deadline = time.monotonic() + within_s
    while not await _maybe_await(check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {within_s} s: {what}")
        await asyncio.sleep(0.05)


async def _maybe_await(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


def driver_config(driver: dict[str, Any]) -> Any:
    config = GatewayConfig.model_validate(
        {"gateway": {"id": "gw"}, "drivers": [{"type": "serial", "name": "port", **driver}]}
    )
    return config.drivers[0]


@asynccontextmanager
async def rig(
    tmp_path: Path, devices: list[dict[str, Any]], driver: dict[str, Any]
) -> AsyncIterator[Rig]:
    config = driver_config(driver)
    assert isinstance(config, SerialLinesConfig | SerialNmeaConfig)
    scenario = parse_scenario({"devices": devices}, tmp_path)
    async with (
        Buffer(tmp_path / "buffer.db", max_bytes=64 * 1024**2, commit_interval=0) as buffer,
        SerialSim(scenario) as sim,
    ):
        source = SerialLineSource(config, "gw", buffer)
        task = asyncio.create_task(source.run())
        try:
            yield Rig(source, buffer, sim)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def contiguous(seqs: list[int]) -> bool:
    return sorted(seqs) == list(range(min(seqs), max(seqs) + 1))


JSON_SENSOR = {"name": "thermo", "path": "dev/thermo", "model": "json-sensor",
               "options": {"interval_s": 0.02}}  # fmt: skip


async def test_every_good_line_arrives_between_noise_bad_frames_and_overlong_lines(
    tmp_path: Path,
) -> None:
    driver = {"protocol": "lines", "format": "json", "port": str(tmp_path / "dev/thermo"),
              "max_line_bytes": 200, "units": {"temperature": "Cel"}}  # fmt: skip
    async with rig(tmp_path, [JSON_SENSOR], driver) as r:
        thermo = r.sim.devices["thermo"]
        await r.wait_for("first readings", lambda: r.stats.readings >= 5)
        for _ in range(3):
            await thermo.noise(150)
            await thermo.bad_frames(2)
            await thermo.overlong(1000)
            await asyncio.sleep(0.1)
        last = thermo.stats.last_seq + 20
        await r.wait_for("20 more lines", lambda: thermo.stats.last_seq >= last)
        await r.wait_for("all of them stored", lambda: _has_seq(r, thermo.stats.last_seq))
        seqs = await r.seqs()
        first = min(seqs)
        assert contiguous(seqs) and len(seqs) == len(set(seqs))
        assert max(seqs) - first + 1 >= 25
        assert r.stats.malformed == 3 + 6  # noise bursts + damaged frames
        assert r.stats.oversized == 3
        assert (await r.readings())[0]["units"] == {"temperature": "Cel"}


async def _has_seq(r: Rig, seq: int) -> bool:
    return seq in await r.seqs()


async def test_an_unplugged_device_is_waited_for_and_read_again_under_a_new_pty(
    tmp_path: Path,
) -> None:
    driver = {"protocol": "lines", "format": "json", "port": str(tmp_path / "dev/thermo")}
    with capture_logs() as logs:
        async with rig(tmp_path, [JSON_SENSOR], driver) as r:
            thermo = r.sim.devices["thermo"]
            await r.wait_for("first readings", lambda: r.stats.readings >= 5)
            first_pty = thermo.port.device
            thermo.unplug()
            await r.wait_for("waiting", lambda: r.stats.state == "waiting for device")
            await asyncio.sleep(2.0)  # several retries while it is away
            before = max(await r.seqs())
            thermo.plug()
            assert thermo.port.device != first_pty
            await r.wait_for("reading again", lambda: r.stats.state == "reading")
            target = thermo.stats.last_seq + 20
            await r.wait_for("20 more lines", lambda: thermo.stats.last_seq >= target)
            await r.wait_for("stored", lambda: _has_seq(r, thermo.stats.last_seq))
            after = sorted(s for s in await r.seqs() if s > before)
            assert after and contiguous(after)  # from the first line read after the replug on
            assert r.stats.counters["disconnects"] == 1
    events = [entry["event"] for entry in logs]
    assert events.count("serial device went away; waiting for it to come back") == 1
    assert events.count("serial device not present; waiting for it to be plugged in") == 0


async def test_a_device_unplugged_while_its_port_is_set_up_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A race made certain: the unplug lands between pyserial's open and the driver's own
    # termios call, which then fails on the hung-up terminal. It used to end the driver.
    driver = {"protocol": "lines", "format": "json", "port": str(tmp_path / "dev/thermo")}
    set_up = link._reads_wait_for_a_byte
    async with rig(tmp_path, [JSON_SENSOR], driver) as r:
        thermo = r.sim.devices["thermo"]
        await r.wait_for("first readings", lambda: r.stats.readings >= 5)

        def unplugged_first(fd: int) -> None:
            monkeypatch.setattr(link, "_reads_wait_for_a_byte", set_up)  # this once
            thermo.unplug()
            set_up(fd)

        monkeypatch.setattr(link, "_reads_wait_for_a_byte", unplugged_first)
        thermo.unplug()
        await r.wait_for("waiting", lambda: r.stats.state == "waiting for device")
        thermo.plug()  # opened, then gone before it is set up
        await r.wait_for("gone again", lambda: r.stats.counters["disconnects"] == 2)
        assert "went away while it was being set up" in (r.stats.last_error or "")
        thermo.plug()
        readings = r.stats.readings
        await r.wait_for("reading again", lambda: r.stats.readings >= readings + 5)


async def test_a_device_absent_at_start_is_read_once_plugged_in(tmp_path: Path) -> None:
    absent = {**JSON_SENSOR, "plugged": False}
    driver = {"protocol": "lines", "format": "json", "port": str(tmp_path / "dev/thermo")}
    async with rig(tmp_path, [absent], driver) as r:
        await r.wait_for("waiting", lambda: r.stats.state == "waiting for device")
        r.sim.devices["thermo"].plug()
        await r.wait_for("readings", lambda: r.stats.readings >= 5)


async def test_a_glob_finds_the_device_whatever_its_number(tmp_path: Path) -> None:
    driver = {"protocol": "lines", "format": "json", "port": str(tmp_path / "dev/therm*")}
    async with rig(tmp_path, [JSON_SENSOR], driver) as r:
        await r.wait_for("readings", lambda: r.stats.readings >= 5)


async def test_a_polled_device_answers_the_command_and_each_answer_is_a_reading(
    tmp_path: Path,
) -> None:
    device = {"name": "meter", "path": "dev/meter", "model": "kv-sensor",
              "options": {"query": "READ\r\n"}}  # fmt: skip
    driver = {"protocol": "lines", "format": "kv", "port": str(tmp_path / "dev/meter"),
              "command": "READ\\r\\n", "poll_interval_s": 0.05,
              "units": {"temp": "Cel"}}  # fmt: skip
    async with rig(tmp_path, [device], driver) as r:
        await r.wait_for("answers", lambda: r.stats.readings >= 5)
        readings = await r.readings()
        assert set(readings[0]["values"]) == {"seq", "temp", "hum"}
        assert readings[0]["units"] == {"temp": "Cel"}
        seqs = await r.seqs()
        assert seqs == sorted(seqs) and contiguous(seqs)
        assert r.stats.counters.get("malformed", 0) == 0


async def test_a_stalled_line_is_counted_once_and_reading_goes_on(tmp_path: Path) -> None:
    driver = {"protocol": "lines", "format": "json", "port": str(tmp_path / "dev/thermo"),
              "stall_timeout_s": 0.3}  # fmt: skip
    async with rig(tmp_path, [JSON_SENSOR], driver) as r:
        await r.wait_for("readings", lambda: r.stats.readings >= 5)
        r.sim.devices["thermo"].stall(1.5)
        await r.wait_for("stalled", lambda: r.stats.state == "stalled")
        count = r.stats.readings
        await r.wait_for("reading again", lambda: r.stats.readings > count + 5)
        assert r.stats.state == "reading"
        assert r.stats.counters["stalled"] == 1


async def test_gps_fixes_become_readings_and_bad_checksums_are_counted(tmp_path: Path) -> None:
    device = {"name": "gps", "path": "dev/gps", "model": "nmea-gps",
              "options": {"interval_s": 0.05, "latitude": -33.8688,
                          "longitude": 151.2093}}  # fmt: skip
    driver = {"protocol": "nmea", "port": str(tmp_path / "dev/gps"), "device": "van-7"}
    async with rig(tmp_path, [device], driver) as r:
        gps = r.sim.devices["gps"]
        await r.wait_for("fixes", lambda: r.stats.readings >= 6)
        await gps.bad_frames(4)
        await r.wait_for("counted", lambda: r.stats.counters.get("bad_checksum") == 4)
        readings = await r.readings()
        gga = next(x for x in readings if "fix_quality" in x["values"])
        rmc = next(x for x in readings if "valid" in x["values"])
        assert gga["device"] == rmc["device"] == "van-7"
        assert gga["values"]["satellites"] == 8 and gga["values"]["altitude"] == 545.4
        assert abs(gga["values"]["latitude"] + 33.8688) < 0.01
        assert abs(rmc["values"]["longitude"] - 151.2093) < 0.01
        assert rmc["values"]["speed"] == pytest.approx(12.0, abs=0.05)
        assert r.stats.malformed == 4


async def test_a_port_held_exclusively_by_another_program_is_reported_as_busy(
    tmp_path: Path,
) -> None:
    config = driver_config(
        {"protocol": "lines", "format": "json", "port": str(tmp_path / "dev/thermo")}
    )
    scenario = parse_scenario({"devices": [JSON_SENSOR]}, tmp_path)
    async with (
        Buffer(tmp_path / "buffer.db", max_bytes=1024**2, commit_interval=0) as buffer,
        SerialSim(scenario),
    ):
        other = serial.Serial(str(tmp_path / "dev/thermo"), exclusive=True)
        source = SerialLineSource(config, "gw", buffer)
        task = asyncio.create_task(source.run())
        try:
            await eventually("refused", lambda: source.stats.state == "cannot open")
            assert "another program has it open" in (source.stats.last_error or "")
            other.close()
            await eventually("read once released", lambda: source.stats.readings >= 3)
        finally:
            other.close()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_waiting_on_a_silent_port_and_on_an_absent_one_costs_no_cpu(tmp_path: Path) -> None:
    """No busy polling: a port with nothing to say, and a device that is not there, are waited
    for by the event loop (and a backoff), not by a loop that spins."""
    silent = {"name": "meter", "path": "dev/meter", "model": "kv-sensor",
              "options": {"query": "READ\r\n"}}  # fmt: skip
    absent = {**JSON_SENSOR, "plugged": False}
    driver = {"protocol": "lines", "format": "kv", "port": str(tmp_path / "dev/meter")}
    async with rig(tmp_path, [silent, absent], driver) as r:
        await r.wait_for("open", lambda: r.stats.state == "reading")
        other = SerialLineSource(
            driver_config({"protocol": "lines", "format": "json",
                           "port": str(tmp_path / "dev/thermo")}),
            "gw",
            r.buffer,
        )  # fmt: skip
        waiting = asyncio.create_task(other.run())
        try:
            await eventually("waiting", lambda: other.stats.state == "waiting for device")
            before = time.process_time()
            await asyncio.sleep(3)
            used = time.process_time() - before
        finally:
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
    assert used < 0.3, f"{used:.2f} s of CPU in 3 s of waiting"
    assert r.stats.readings == 0
