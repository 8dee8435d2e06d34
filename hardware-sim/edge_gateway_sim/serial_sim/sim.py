"""Running a scenario: every device on its pty, its model talking, faults on time or on demand.

`SerialSim` is an async context manager: entering plugs the devices and starts
them; leaving stops them and removes every pty and symlink. Tests call the
fault methods of `SerialSim.devices[name]` directly (on demand); `run_faults()`
plays the scenario's schedule.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

from edge_gateway_sim.serial_sim.models import DeviceModel
from edge_gateway_sim.serial_sim.pty_port import PtyPort
from edge_gateway_sim.serial_sim.registry import model_class
from edge_gateway_sim.serial_sim.scenario import DeviceSpec, FaultSpec, Scenario, ScenarioError


@dataclass(slots=True)
class DeviceStats:
    """What one device did: good frames written (`sent`), and every fault."""

    sent: int = 0
    last_seq: int = 0
    lost: int = 0
    """Frames cut off by an unplug while being written."""
    answers: int = 0
    bad_frames: int = 0
    noise_bytes: int = 0
    overlong: int = 0
    unplugs: int = 0
    stalls: int = 0


class SimDevice:
    """One simulated device: its model, its port, its faults."""

    def __init__(self, spec: DeviceSpec, rng: random.Random) -> None:
        self.spec = spec
        self.rng = rng
        self.model: DeviceModel = model_class(spec.model)(spec.options, rng)
        self.port = PtyPort(spec.path)
        self.stats = DeviceStats()
        self._write_lock = asyncio.Lock()
        self._last_frame = b""
        self._quiet_until = 0.0
        self._progress = asyncio.Event()

    @property
    def stalled(self) -> bool:
        return time.monotonic() < self._quiet_until

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._answer())
            interval = self.model.interval_s
            while interval is not None:
                await asyncio.sleep(interval)
                if self.port.plugged and not self.stalled:
                    await self.send_frame()

    async def send_frame(self) -> None:
        frame = self.model.frame()
        if await self._write(frame):
            self.stats.sent += 1
            self.stats.last_seq = self.model.seq
            self._last_frame = frame
            self._progress.set()
        else:
            self.stats.lost += 1

    async def sent_up_to(self, seq: int) -> None:
        """Return once the frame numbered `seq` has been written."""
        while self.stats.last_seq < seq:
            self._progress.clear()
            await self._progress.wait()

    async def _answer(self) -> None:
        while True:
            reply = self.model.answer(await self.port.read())
            if reply:
                await asyncio.sleep(self.model.reply_delay_s(reply))
            if reply and not self.stalled and await self._write(reply):
                self.stats.answers += 1
                self.stats.last_seq = self.model.seq
                self._progress.set()

    async def _write(self, data: bytes) -> bool:
        async with self._write_lock:
            return await self.port.write(data)

    # -- faults ---------------------------------------------------------------------------

    def unplug(self) -> None:
        if self.port.plugged:
            self.stats.unplugs += 1
        self.port.unplug()

    def plug(self) -> None:
        self.port.plug()

    async def noise(self, size: int) -> None:
        """Random bytes with the high bit set (what a wrong baud rate looks like), then a
        delimiter: no decoder can take them for a frame, and the next frame stays whole."""
        garbage = bytes(self.rng.randrange(0x80, 0x100) for _ in range(size))
        if await self._write(garbage + self.model.delimiter):
            self.stats.noise_bytes += size

    async def bad_frames(self, count: int) -> None:
        for _ in range(count):
            if self._last_frame and await self._write(self.model.corrupt(self._last_frame)):
                self.stats.bad_frames += 1

    async def overlong(self, size: int) -> None:
        if await self._write(b"x" * size + self.model.delimiter):
            self.stats.overlong += 1

    def stall(self, seconds: float) -> None:
        self.stats.stalls += 1
        self._quiet_until = time.monotonic() + seconds


class SerialSim:
    """All devices of a scenario, for as long as the `async with` lasts."""

    def __init__(self, scenario: Scenario) -> None:
        rng = random.Random(scenario.seed)
        self.scenario = scenario
        try:
            self.devices = {
                spec.name: SimDevice(spec, random.Random(rng.random())) for spec in scenario.devices
            }
        except ValueError as exc:  # a model's options
            raise ScenarioError(str(exc)) from None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> SerialSim:
        for device in self.devices.values():
            if device.spec.plugged:
                device.plug()
            self._tasks.append(asyncio.create_task(device.run(), name=device.spec.name))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for device in self.devices.values():
            device.port.close()

    async def run_faults(self) -> None:
        """Play the scenario's fault schedule, from now."""
        start = time.monotonic()
        async with asyncio.TaskGroup() as tasks:
            for fault in self.scenario.faults:
                await asyncio.sleep(max(0.0, start + fault.at_s - time.monotonic()))
                tasks.create_task(self.apply(fault))

    async def apply(self, fault: FaultSpec) -> None:
        device = self.devices[fault.device]
        match fault.fault:
            case "unplug":
                device.unplug()
                if fault.duration_s is not None:
                    await asyncio.sleep(fault.duration_s)
                    device.plug()
            case "plug":
                device.plug()
            case "noise":
                await device.noise(fault.bytes)
            case "bad_frames":
                await device.bad_frames(fault.count)
            case "stall":
                device.stall(fault.duration_s or 5.0)
            case "overlong":
                await device.overlong(fault.bytes)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(device.stats) for name, device in self.devices.items()}
