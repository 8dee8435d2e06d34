"""The running drivers, by name: each supervised in its own task, replaced one by one on reload.

On a reload only the drivers whose configuration changed are restarted (driver
configurations are frozen pydantic models: equal by value); the others keep their
connections, their sessions and their counters. All new drivers are built before any
old one stops, so a configuration a driver cannot be built from changes nothing.

What a stopped driver still held for the buffer (its `outbox`) is not dropped: a
driver restarted under the same name takes it over; a driver stopped for good (removed
on reload, or at shutdown) gets one last try at the buffer, and what that does not take
is logged as lost, with its count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from drivers import create_driver
from drivers.base import Driver, Sink
from gateway.backoff import Backoff
from gateway.config import DriverConfig
from gateway.errors import AcceptedThenCancelled, BufferFull, ConfigError, StorageError

log = structlog.get_logger("gateway.supervisor")

STOP_WAIT_S = 15.0
"""How long a cancelled driver may take to end before it is cancelled again: more than an
MQTT connect in progress takes (`CONNECT_TIMEOUT_S`, 10 s), which a stop waits for."""


@dataclass(frozen=True, slots=True)
class _Running:
    config: DriverConfig
    driver: Driver
    task: asyncio.Task[None]


@dataclass(frozen=True, slots=True)
class Changes:
    """What a reload did to the drivers, by name."""

    started: list[str]
    restarted: list[str]
    stopped: list[str]
    kept: list[str]


class DriverSupervisor:
    """Drivers running as tasks of the gateway's TaskGroup; `stop()` cancels them all."""

    def __init__(self, tasks: asyncio.TaskGroup, gateway_id: str, sink: Sink) -> None:
        self._tasks = tasks
        self._gateway_id = gateway_id
        self._sink = sink
        self._running: dict[str, _Running] = {}
        self._drivers: tuple[Driver, ...] = ()

    @property
    def drivers(self) -> tuple[Driver, ...]:
        """The drivers now, as one immutable tuple: read from other threads (metrics)."""
        return self._drivers

    def start(self, configs: Sequence[DriverConfig]) -> None:
        """Start the drivers of `configs`; `ConfigError`, and none started, if one cannot be."""
        built = [self._build(config) for config in configs]
        for config, driver in zip(configs, built, strict=True):
            self._start(config, driver)
        self._published()

    async def apply(self, configs: Sequence[DriverConfig]) -> Changes:
        """Make the running drivers those of `configs`, restarting only what changed.

        `ConfigError`, with nothing changed, if a new driver cannot be built.
        """
        wanted = {config.name: config for config in configs}
        gone = [name for name in self._running if name not in wanted]
        changed = [
            name
            for name, config in wanted.items()
            if name in self._running and self._running[name].config != config
        ]
        new = [name for name in wanted if name not in self._running]
        built = {name: self._build(wanted[name]) for name in changed + new}
        old = {name: self._running.pop(name) for name in gone + changed}
        await _cancel([running.task for running in old.values()])
        for name in changed:
            self._hand_over(old[name].driver, built[name])
        for name in changed + new:
            self._start(wanted[name], built[name])
        self._published()
        for name in changed:  # what the new driver had no room for
            await self._last_put(old[name].driver)
        for name in gone:
            await self._last_put(old[name].driver)
        kept = [name for name in wanted if name not in changed and name not in new]
        return Changes(started=new, restarted=changed, stopped=gone, kept=kept)

    async def stop(self) -> None:
        """Stop every driver and put what they held; they stay listed, for the last status."""
        await _cancel([running.task for running in self._running.values()])
        for running in self._running.values():
            await self._last_put(running.driver)

    def _build(self, config: DriverConfig) -> Driver:
        try:
            return create_driver(config, self._gateway_id, self._sink)
        except Exception as exc:  # whatever a constructor raises, the configuration is at fault
            raise ConfigError(
                f"drivers: {config.name}: cannot be set up: {type(exc).__name__}: {exc}"
            ) from exc

    def _start(self, config: DriverConfig, driver: Driver) -> None:
        task = self._tasks.create_task(supervise(driver), name=f"driver {config.name}")
        self._running[config.name] = _Running(config, driver, task)

    def _published(self) -> None:
        self._drivers = tuple(running.driver for running in self._running.values())

    @staticmethod
    def _hand_over(old: Driver, new: Driver) -> None:
        """Give the replacement what the old driver held, if it has room (else it stays)."""
        if old.outbox is None or not len(old.outbox) or new.outbox is None:
            return
        held = old.outbox.take()
        if new.outbox.add(held):
            log.info("readings handed to the restarted driver", driver=new.name, readings=len(held))
        else:
            old.outbox.add(held)

    async def _last_put(self, driver: Driver) -> None:
        """One try to put what a stopped driver held; if refused, say how much is lost."""
        if driver.outbox is None or not len(driver.outbox):
            return
        held = driver.outbox.take()
        try:
            await self._sink.put(held)
        except AcceptedThenCancelled:
            driver.stats.read(len(held))
            raise
        except asyncio.CancelledError:  # taken back by the buffer: held again, for a next stop
            driver.outbox.add(held)
            raise
        except (BufferFull, StorageError) as exc:
            log.error(
                "readings a stopped driver held were lost: the buffer refused them",
                driver=driver.name,
                lost=len(held),
                error=str(exc),
                hint="see the buffer's state in `edge-gateway status` (full disk, max_bytes)",
            )
        else:
            driver.stats.read(len(held))


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait until they end; one that outlives its cancel by
    `STOP_WAIT_S` is cancelled again: a library that swallowed the cancel in a driver's own
    task (pymodbus did) wedged a reload, its other drivers stopped, and the shutdown after
    it. (A task group inside a driver lets a second cancel reach only its own body, not
    its children: those must not swallow one.)"""
    for task in tasks:
        task.cancel()
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=STOP_WAIT_S)
        for task in pending:
            log.warning(
                "driver did not stop when cancelled; cancelling it again",
                driver=task.get_name().removeprefix("driver "),
                waited_s=STOP_WAIT_S,
                hint="a library under the driver swallowed the cancel, or the buffer's disk "
                "hangs a commit: please report it with this log",
            )
            task.cancel()


async def supervise(driver: Driver) -> None:
    """Run a driver; when it fails, log why and restart it with backoff. Others go on."""
    backoff = Backoff(1.0, 60.0)
    while True:
        started = time.monotonic()
        try:
            await driver.run()
            problem = "driver stopped by itself"
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being stopped
            # A library's own future was cancelled under the driver: a failure like any other,
            # or the driver would end for good, in silence (a task group ignores it).
            problem = "CancelledError: cancelled inside the driver"
            log.exception("driver failed", driver=driver.name)
        except Exception as exc:  # a driver's bug must not take the gateway down
            problem = f"{type(exc).__name__}: {exc}"
            log.exception("driver failed", driver=driver.name)
        delay = backoff.delay_after(started)
        driver.stats.failed(problem)
        driver.stats.state = "restarting"
        log.warning("restarting driver", driver=driver.name, retry_in_s=round(delay, 2))
        await asyncio.sleep(delay)
