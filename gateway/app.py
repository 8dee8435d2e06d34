"""The pipeline: drivers -> buffer -> publisher, the order in which they start and stop, reloads.

Stop order matters for "nothing accepted is lost": drivers stop first (no new
intake), the buffer commits what was put, the publisher gets a bounded time to
collect confirms for what is in flight; the rest waits on disk for the next start.

A reload (SIGHUP, `systemctl reload`) re-reads the file and restarts only the drivers
whose configuration changed; the buffer and the publisher keep running as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from gateway.buffer import Buffer
from gateway.clock import system_clock_synchronized
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.metrics import GatewayCollector, metrics_endpoint
from gateway.notify import Notifier
from gateway.publisher import Publisher
from gateway.service import ServiceReporter
from gateway.status import BUFFER_FILE, StatusWriter
from gateway.supervisor import DriverSupervisor

log = structlog.get_logger("gateway.app")

RESTART_SECTIONS = ("gateway", "buffer", "amqp", "logging", "metrics")
"""Sections a reload does not apply: they take effect at the next restart."""


async def run_gateway(
    config: GatewayConfig,
    stop: asyncio.Event,
    reload: asyncio.Event | None = None,
    load: Callable[[], GatewayConfig] | None = None,
    notifier: Notifier | None = None,
    hurry: asyncio.Event | None = None,
) -> None:
    """Run until `stop` is set; raise `StorageError` if the buffer's disk fails.

    Each time `reload` is set, `load()` (which raises `ConfigError`) gives the new
    configuration. `hurry` set during the stop ends its wait for confirms (a second Ctrl-C).
    """
    notifier = notifier or Notifier({})
    hurry = hurry or asyncio.Event()
    reload = reload or asyncio.Event()
    settings = config.buffer
    buffer = Buffer(
        config.gateway.state_dir / BUFFER_FILE,
        max_bytes=int(settings.max_bytes),
        when_full=settings.when_full,
        commit_interval=settings.commit_interval_ms / 1000,
        clock_synchronized=system_clock_synchronized,
    )
    async with buffer:
        publisher = Publisher(config.amqp, config.gateway, buffer)
        reporter = ServiceReporter(notifier, buffer, publisher)
        for message, fields in config.service_warnings(reporter.stall_s, reporter.notifier.enabled):
            log.warning(message, **fields)
        async with asyncio.TaskGroup() as tasks:
            supervisor = DriverSupervisor(tasks, config.gateway.id, buffer)
            supervisor.start(config.drivers)  # first: a driver that cannot be built stops it all
            status = StatusWriter(
                config.gateway.state_dir, buffer, publisher, lambda: supervisor.drivers
            )
            collector = GatewayCollector(buffer, publisher, lambda: list(supervisor.drivers))
            async with metrics_endpoint(config.metrics, collector):
                publishing = tasks.create_task(publisher.run())
                reporting = tasks.create_task(status.run())
                watching = tasks.create_task(_watch_storage(buffer))
                log.info(
                    "gateway started",
                    gateway=config.gateway.id,
                    buffer=str(buffer.path),
                    buffered=buffer.depth,
                    drivers=[c.name for c in config.drivers],
                )
                notifier.ready(reporter.status_line())
                pinging = tasks.create_task(reporter.run())
                try:
                    while await _next_request(stop, reload) == "reload":
                        assert load is not None, "a reload needs a way to load the configuration"
                        notifier.reloading()
                        config = await _reload(config, load, supervisor)
                        notifier.ready(reporter.status_line())
                    notifier.stopping()
                    await _stop_intake_then_publisher(
                        supervisor, publisher, publishing, config, hurry
                    )
                except BaseException:
                    # A sibling failed (the disk, a bug) and the group cancels this body, or
                    # the body failed itself: the drivers still hand the buffer what they
                    # hold, or say what is lost.
                    await supervisor.stop()
                    raise
                for task in (watching, reporting, pinging):
                    task.cancel()
    log.info("gateway stopped", buffered=buffer.depth)


async def _stop_intake_then_publisher(
    supervisor: DriverSupervisor,
    publisher: Publisher,
    publishing: asyncio.Task[None],
    config: GatewayConfig,
    hurry: asyncio.Event,
) -> None:
    """No new intake first; then in-flight publishes get `shutdown_grace_s` to be confirmed,
    or less if `hurry` is set. Drivers always finish their stop: what they hold in memory
    (serial lines, BLE adverts) is not on disk yet."""
    log.info(
        "stopping: drivers first, then in-flight publishes",
        at_most_s=round(config.longest_stop_s),
        grace_s=config.amqp.shutdown_grace_s,
        hint="a second Ctrl-C or SIGTERM stops without waiting for confirms",
    )
    await supervisor.stop()
    publisher.stop()
    hurried = asyncio.ensure_future(hurry.wait())
    try:
        await asyncio.wait(
            (publishing, hurried),
            timeout=config.amqp.shutdown_grace_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        hurried.cancel()
    if not publishing.done():
        log.warning(
            "confirms still missing at shutdown; those readings stay buffered",
            in_flight=publisher.counters.in_flight,
            cut_short=hurry.is_set(),
        )
        publishing.cancel()


async def _next_request(stop: asyncio.Event, reload: asyncio.Event) -> str:
    """Wait for a stop or a reload; a stop wins when both are pending."""
    if not stop.is_set() and not reload.is_set():
        waits = [asyncio.ensure_future(e.wait()) for e in (stop, reload)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
    if stop.is_set():
        return "stop"
    reload.clear()
    return "reload"


async def _reload(
    running: GatewayConfig, load: Callable[[], GatewayConfig], supervisor: DriverSupervisor
) -> GatewayConfig:
    """Apply a new configuration's drivers; return what now runs.

    A bad file, or a driver that cannot be built from it, changes nothing.
    """
    try:
        new = await asyncio.to_thread(load)
        changes = await supervisor.apply(new.drivers)
    except ConfigError as exc:
        log.error(
            "configuration rejected on reload; the running configuration stays in force",
            error=str(exc),
            hint="fix the file (`edge-gateway check --config FILE`), then reload again",
        )
        return running
    pending = [s for s in RESTART_SECTIONS if getattr(new, s) != getattr(running, s)]
    log.info(
        "configuration reloaded",
        drivers_started=changes.started,
        drivers_restarted=changes.restarted,
        drivers_stopped=changes.stopped,
        drivers_kept=changes.kept,
    )
    if pending:
        log.warning(
            "configuration changes that take effect only after a restart",
            sections=pending,
            hint="systemctl restart edge-gateway",
        )
    # The new file's model (its drivers' union is narrowed to their types), the running sections.
    return new.model_copy(update={s: getattr(running, s) for s in RESTART_SECTIONS})


async def _watch_storage(buffer: Buffer) -> None:
    """Turn a failed disk into a stop of the whole gateway (systemd restarts it)."""
    raise await buffer.wait_failed()
