"""What a serial driver read but the buffer has not taken yet survives the driver's task.

A serial device cannot be asked to send again. These tests stop a driver (a reload that
restarts or removes it, a shutdown) while the buffer refuses what it read, on a real
pseudo-terminal with a real buffer behind a gate that refuses as a full buffer does, and
check that every line ends up in the buffer, or is logged as lost with its count.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from drivers.serial.lines_config import SerialLinesConfig
from gateway.app import _reload, run_gateway
from gateway.buffer import Buffer
from gateway.cli import EXIT_CONFIG, main
from gateway.config import GatewayConfig, load_config
from gateway.errors import BufferFull, ConfigError
from gateway.model import Reading
from gateway.publisher import Publisher
from gateway.supervisor import DriverSupervisor


class Gate:
    """A real buffer that refuses every put, as a full one does, until opened."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self.open = False
        self.refused = 0

    async def put(self, readings: Sequence[Reading]) -> None:
        if not self.open:
            self.refused += 1
            raise BufferFull("buffer full (test)")
        await self.buffer.put(readings)

    async def seqs(self) -> list[int]:
        chunks = await self.buffer.fetch(0, 1_000_000)
        return [int(json.loads(r.body)["values"]["seq"]) for c in chunks for r in c.readings]


@contextmanager
def pty() -> Iterator[tuple[int, str]]:
    """A pseudo-terminal: the device's end (to write lines to) and the port's path."""
    device, port = os.openpty()
    try:
        yield device, os.ttyname(port)
    finally:
        os.close(port)
        os.close(device)


def lines_config(port: str, **options: Any) -> SerialLinesConfig:
    return SerialLinesConfig.model_validate(
        {"type": "serial", "protocol": "lines", "name": "thermo", "format": "json",
         "port": port, **options}
    )  # fmt: skip


@asynccontextmanager
async def supervised(
    tmp_path: Path, config: SerialLinesConfig
) -> AsyncIterator[tuple[DriverSupervisor, Gate]]:
    """A supervisor running `config`'s driver into a closed gate; stopped on the way out."""
    async with Buffer(tmp_path / "buffer.db", max_bytes=2**24, commit_interval=0) as buffer:
        gate = Gate(buffer)
        async with asyncio.TaskGroup() as tasks:
            supervisor = DriverSupervisor(tasks, "gw", gate)
            supervisor.start([config])
            try:
                yield supervisor, gate
            finally:
                await supervisor.stop()


async def until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until `check()` holds; a deadline, not a timing claim."""
    deadline = time.monotonic() + 10
    while not await check():
        assert time.monotonic() < deadline, f"not reached in 10 s: {what}"
        await asyncio.sleep(0.02)


async def refused_three_lines(supervisor: DriverSupervisor, device: int, gate: Gate) -> None:
    """Once the port is open, send three lines; wait until the buffer refused them twice."""

    async def reading() -> bool:
        return supervisor.drivers[0].stats.state == "reading"

    async def refused() -> bool:
        return gate.refused >= 2

    await until("port open", reading)
    os.write(device, b'{"seq": 1}\n{"seq": 2}\n{"seq": 3}\n')
    await until("lines refused twice", refused)


async def test_a_driver_restarted_by_a_reload_takes_over_what_the_old_one_held(
    tmp_path: Path,
) -> None:
    with pty() as (device, port):
        async with supervised(tmp_path, lines_config(port)) as (supervisor, gate):
            await refused_three_lines(supervisor, device, gate)
            await supervisor.apply([lines_config(port, stall_timeout_s=60)])
            gate.open = True

            async def stored() -> bool:
                return await gate.seqs() == [1, 2, 3]

            await until("the held lines stored", stored)


async def test_a_driver_removed_on_reload_puts_what_it_held_once_more(tmp_path: Path) -> None:
    with pty() as (device, port):
        async with supervised(tmp_path, lines_config(port)) as (supervisor, gate):
            await refused_three_lines(supervisor, device, gate)
            gate.open = True
            changes = await supervisor.apply([])
            assert changes.stopped == ["thermo"]
            assert await gate.seqs() == [1, 2, 3]


async def test_what_a_removed_driver_held_and_the_buffer_refuses_is_logged_as_lost(
    tmp_path: Path,
) -> None:
    with pty() as (device, port), capture_logs() as logs:
        async with supervised(tmp_path, lines_config(port)) as (supervisor, gate):
            await refused_three_lines(supervisor, device, gate)
            await supervisor.apply([])
    lost = [entry for entry in logs if entry["log_level"] == "error"]
    assert [(e["driver"], e["lost"]) for e in lost] == [("thermo", 3)]


async def test_at_shutdown_what_the_drivers_held_is_put_once_more(tmp_path: Path) -> None:
    with pty() as (device, port):
        async with supervised(tmp_path, lines_config(port)) as (supervisor, gate):
            await refused_three_lines(supervisor, device, gate)
            gate.open = True
            await supervisor.stop()
            assert await gate.seqs() == [1, 2, 3]


def unbuildable(port: str) -> SerialLinesConfig:
    """A configuration its driver cannot be built from (validation would refuse it today)."""
    valid = lines_config(port, name="other")
    return SerialLinesConfig.model_construct(
        **{**dict(valid), "delimiter": "€", "encoding": "ascii"}
    )


async def test_a_reload_with_a_driver_that_cannot_be_built_changes_nothing(
    tmp_path: Path,
) -> None:
    with pty() as (_, port):
        async with supervised(tmp_path, lines_config(port)) as (supervisor, _):
            (running,) = supervisor.drivers
            with pytest.raises(ConfigError, match="drivers: other: cannot be set up"):
                await supervisor.apply([lines_config(port, stall_timeout_s=60), unbuildable(port)])
            assert supervisor.drivers == (running,)
            assert running.stats.state != "stopped"


async def test_a_reload_to_other_driver_types_runs_a_whole_configuration_of_them(
    tmp_path: Path,
) -> None:
    """load_config narrows the drivers' union to the file's types; after a reload that adds
    a type, what runs is the new file's configuration (with the sections a reload does not
    apply kept), not the old one's holding drivers its union does not have."""
    with pty() as (_, port):
        path = tmp_path / "gateway.yaml"
        head = f"gateway: {{id: gw, state_dir: {tmp_path / 'state'}}}\ndrivers:\n"
        serial = (
            f"  - {{type: serial, protocol: lines, name: thermo, format: json, port: {port}}}\n"
        )
        path.write_text(head + serial)
        running = load_config(path)
        async with supervised(tmp_path, running.drivers[0]) as (supervisor, _):  # type: ignore[arg-type]
            mqtt = "  - {type: mqtt, name: radio, port: 1, subscriptions: [{topic: 'a/+'}]}\n"
            path.write_text(head + serial + mqtt + "amqp: {exchange: other}\n")
            now = await _reload(running, lambda: load_config(path), supervisor)
            assert [d.name for d in supervisor.drivers] == ["thermo", "radio"]
    assert [d.type for d in now.drivers] == ["serial", "mqtt"]
    assert now.amqp == running.amqp  # a restart applies it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic warns when a value does not fit its model
        now.model_dump()


async def test_a_start_with_a_driver_that_cannot_be_built_starts_none(tmp_path: Path) -> None:
    with pty() as (_, port):
        async with asyncio.TaskGroup() as tasks:
            supervisor = DriverSupervisor(tasks, "gw", Gate(None))  # type: ignore[arg-type]
            with pytest.raises(ConfigError):
                supervisor.start([lines_config(port), unbuildable(port)])
            assert supervisor.drivers == ()


def test_the_gateway_exits_with_a_configuration_error_when_a_driver_cannot_be_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit status 2 (configuration error): systemd does not restart it in a loop."""

    def refuse(*args: Any) -> None:
        raise ValueError("this port cannot be set up")

    monkeypatch.setattr("drivers.serial.source.SerialLineSource.__init__", refuse)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway: {{id: gw, site: test, state_dir: {tmp_path / 'state'}}}\n"
        "drivers:\n"
        "  - {type: serial, protocol: lines, name: thermo, format: json, port: /dev/null}\n"
    )
    assert main(["run", "--config", str(config)]) == EXIT_CONFIG


async def test_the_drivers_other_threads_read_are_one_tuple_replaced_whole_on_reload(
    tmp_path: Path,
) -> None:
    """The metrics endpoint reads them from prometheus-client's thread while a reload runs."""
    with pty() as (_, port):
        async with supervised(tmp_path, lines_config(port)) as (supervisor, _):
            before = supervisor.drivers
            assert isinstance(before, tuple)
            await supervisor.apply([lines_config(port, stall_timeout_s=60)])
            (old,) = before  # unchanged by the reload
            (new,) = supervisor.drivers
            assert new is not old


@pytest.mark.parametrize("bug", ["in the publisher", "while reloading"])
async def test_when_the_gateway_fails_what_the_drivers_held_is_put_or_logged_as_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bug: str
) -> None:
    """A bug ends the gateway, in a sibling task (the publisher) or in the main one (a
    reload): the serial driver still hands over what it held (here the buffer is full, so it is
    logged as lost, with its count), not in silence."""
    failing = asyncio.Event()
    reload = asyncio.Event()

    async def buggy_publisher(_self: Publisher) -> None:
        await failing.wait()
        raise RuntimeError("a bug in the publisher")

    def buggy_load() -> GatewayConfig:
        raise RuntimeError("a bug while reloading")

    if bug == "in the publisher":
        monkeypatch.setattr(Publisher, "run", buggy_publisher)
    async with Buffer(tmp_path / "buffer.db", max_bytes=2**24) as earlier:  # one waiting...
        await earlier.put([Reading("old", datetime.now(UTC), {"pad": "x" * 2000}, "earlier")])
    with pty() as (device, port), capture_logs() as logs:
        config = GatewayConfig.model_validate(
            {
                "gateway": {"id": "gw", "state_dir": str(tmp_path)},
                "buffer": {"max_bytes": "1KB", "when_full": "reject_new"},  # ...refuses the rest
                "drivers": [dict(lines_config(port))],
            }
        )

        async def reading() -> bool:
            return running is not None and running.drivers[0].stats.state == "reading"

        async def held() -> bool:
            return running is not None and len(running.drivers[0].outbox or ()) >= 3

        async def held_three_then_fail() -> None:
            await until("port open", reading)
            os.write(device, b'{"seq": 1}\n{"seq": 2}\n{"seq": 3}\n')
            await until("the driver holds the three lines", held)
            (failing if bug == "in the publisher" else reload).set()

        running: DriverSupervisor | None = None
        start = DriverSupervisor.start

        def keep(self: DriverSupervisor, configs: Any) -> None:
            nonlocal running
            running = self
            start(self, configs)

        monkeypatch.setattr(DriverSupervisor, "start", keep)
        helper = asyncio.create_task(held_three_then_fail())
        with pytest.raises(ExceptionGroup) as failed:
            await run_gateway(config, asyncio.Event(), reload, buggy_load)
        await helper
    assert failed.group_contains(RuntimeError, match=f"a bug {bug}")
    lost = [e for e in logs if e["event"].startswith("readings a stopped driver held were lost")]
    assert [(e["driver"], e["lost"]) for e in lost] == [("thermo", 3)]
