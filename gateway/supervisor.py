"""The running drivers, by name: each supervised in its own task, replaced one by one on reload.

On a reload only the drivers whose configuration changed are restarted (driver
configurations are frozen pydantic models: equal by value); the others keep their
connections, their sessions and their counters.
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

log = structlog.get_logger("gateway.intake")

_HEALTHY_RUN_S = 60.0


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


class Intake:
    """Drivers running as tasks of the gateway's TaskGroup; `stop()` cancels them all."""

    def __init__(self, tasks: asyncio.TaskGroup, gateway_id: str, sink: Sink) -> None:
        self._tasks = tasks
        self._gateway_id = gateway_id
        self._sink = sink
        self._running: dict[str, _Running] = {}

    @property
    def drivers(self) -> list[Driver]:
        return [running.driver for running in self._running.values()]

    def start(self, configs: Sequence[DriverConfig]) -> None:
        for config in configs:
            self._start(config)

    async def apply(self, configs: Sequence[DriverConfig]) -> Changes:
        """Make the running drivers those of `configs`, restarting only what changed."""
        wanted = {config.name: config for config in configs}
        gone = [name for name in self._running if name not in wanted]
        changed = [
            name
            for name, config in wanted.items()
            if name in self._running and self._running[name].config != config
        ]
        new = [name for name in wanted if name not in self._running]
        await _cancel([self._running.pop(name).task for name in gone + changed])
        for name in changed + new:
            self._start(wanted[name])
        kept = [name for name in wanted if name not in changed and name not in new]
        return Changes(started=new, restarted=changed, stopped=gone, kept=kept)

    async def stop(self) -> None:
        """Stop every driver; they stay listed, so that the last status still shows them."""
        await _cancel([running.task for running in self._running.values()])

    def _start(self, config: DriverConfig) -> None:
        driver = create_driver(config, self._gateway_id, self._sink)
        task = self._tasks.create_task(supervise(driver), name=f"driver {config.name}")
        self._running[config.name] = _Running(config, driver, task)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def supervise(driver: Driver) -> None:
    """Run a driver; when it fails, log why and restart it with backoff. Others go on."""
    backoff = Backoff(1.0, 60.0)
    while True:
        started = time.monotonic()
        try:
            await driver.run()
            problem = "driver stopped by itself"
        except Exception as exc:  # a driver's bug must not take the gateway down
            problem = f"{type(exc).__name__}: {exc}"
            log.exception("driver failed", driver=driver.name)
        if time.monotonic() - started > _HEALTHY_RUN_S:
            backoff.reset()
        delay = backoff.next_delay()
        driver.stats.failed(problem)
        driver.stats.state = "restarting"
        log.warning("restarting driver", driver=driver.name, retry_in_s=round(delay, 2))
        await asyncio.sleep(delay)
