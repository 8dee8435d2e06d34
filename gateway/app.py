"""The pipeline: drivers -> buffer -> publisher, and the order in which they start and stop.

Stop order matters for "nothing accepted is lost": drivers stop first (no new
intake), the buffer commits what was put, the publisher gets a bounded time to
collect confirms for what is in flight; the rest waits on disk for the next start.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from drivers import create_driver
from drivers.base import Driver
from gateway.backoff import Backoff
from gateway.buffer import Buffer
from gateway.config import GatewayConfig
from gateway.publisher import Publisher
from gateway.status import BUFFER_FILE, StatusWriter

log = structlog.get_logger("gateway.app")

_HEALTHY_RUN_S = 60.0


async def run_gateway(config: GatewayConfig, stop: asyncio.Event) -> None:
    """Run until `stop` is set; raise `StorageError` if the buffer's disk fails."""
    settings = config.buffer
    buffer = Buffer(
        config.gateway.state_dir / BUFFER_FILE,
        max_bytes=int(settings.max_bytes),
        when_full=settings.when_full,
        commit_interval=settings.commit_interval_ms / 1000,
    )
    async with buffer:
        publisher = Publisher(config.amqp, config.gateway, buffer)
        drivers = [create_driver(c, config.gateway.id, buffer) for c in config.drivers]
        status = StatusWriter(config.gateway.state_dir, buffer, publisher, drivers)
        log.info(
            "gateway started",
            gateway=config.gateway.id,
            buffer=str(buffer.path),
            buffered=buffer.depth,
            drivers=[d.name for d in drivers],
        )
        async with asyncio.TaskGroup() as tasks:
            publishing = tasks.create_task(publisher.run())
            intake = [tasks.create_task(supervise(driver)) for driver in drivers]
            reporting = tasks.create_task(status.run())
            watching = tasks.create_task(_watch_storage(buffer))
            await stop.wait()
            log.info("stopping: drivers first, then in-flight publishes")
            for task in intake:
                task.cancel()
            await asyncio.gather(*intake, return_exceptions=True)
            publisher.stop()
            try:
                await asyncio.wait_for(asyncio.shield(publishing), config.amqp.shutdown_grace_s)
            except TimeoutError:
                log.warning(
                    "confirms still missing at shutdown; those readings stay buffered",
                    in_flight=publisher.counters.in_flight,
                )
                publishing.cancel()
            watching.cancel()
            reporting.cancel()
    log.info("gateway stopped", buffered=buffer.depth)


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


async def _watch_storage(buffer: Buffer) -> None:
    """Turn a failed disk into a stop of the whole gateway (systemd restarts it)."""
    raise await buffer.wait_failed()
