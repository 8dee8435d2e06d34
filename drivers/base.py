"""What every driver shares: where its readings go, how it holds them until then, its health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from gateway.backoff import Backoff
from gateway.errors import AcceptedThenCancelled, BufferFull, StorageError
from gateway.logs import RateLimitedLog
from gateway.model import Encoded, Reading


class Sink(Protocol):
    """Where a driver hands readings. `put` returns once they are on disk (the buffer).

    It raises `BufferFull` or `StorageError` when they were not accepted; the
    driver must then not acknowledge its source, and retry later.
    """

    async def put(self, readings: Sequence[Reading] | Encoded) -> None: ...


class Driver(Protocol):
    """One transport instance. `run()` works until cancelled; raising means "restart me".

    `outbox` holds what the driver read but the buffer has not yet taken, so that the
    supervisor can hand it on when it stops the driver; None for a driver whose source
    keeps unaccepted data itself (MQTT: the broker redelivers what was not acknowledged).
    """

    name: str
    stats: DriverStats

    @property
    def outbox(self) -> Outbox | None: ...

    async def run(self) -> None: ...


@dataclass(slots=True)
class DriverStats:
    """A driver's health, shown by `edge-gateway status`."""

    type: str
    state: str = "starting"
    readings: int = 0
    last_reading: float | None = None
    malformed: int = 0
    oversized: int = 0
    errors: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    """When `last_error` happened, by the monotonic clock (NTP steps the wall clock of a Pi
    without a real-time clock after boot): `snapshot()` turns it into `last_error_age_s`,
    which status shows, as an error long past beside a driver that reads again is no news."""
    counters: dict[str, int] = field(default_factory=dict)

    def read(self, count: int) -> None:
        self.readings += count
        self.last_reading = time.time()

    def failed(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        self.last_error_at = time.monotonic()

    def bump(self, counter: str, n: int = 1) -> None:
        """Add `n` to a named counter (`counters`, shown by `edge-gateway status`)."""
        self.counters[counter] = self.counters.get(counter, 0) + n

    def snapshot(self) -> dict[str, Any]:
        figures = asdict(self)
        at = figures.pop("last_error_at")
        figures["last_error_age_s"] = None if at is None else round(time.monotonic() - at, 1)
        return figures


async def put_until_accepted(
    sink: Sink,
    readings: Sequence[Reading] | Encoded,
    driver: str,
    stats: DriverStats,
    log: RateLimitedLog,
    holding: str = "holding them",
) -> None:
    """Put into the buffer, retrying until it takes them.

    What a driver got from a device cannot be asked for again (a serial line, an
    advertisement) or must not be acknowledged before it is on disk (MQTT), so a
    refusal (a full buffer, a failing disk) is waited out, never turned into a drop.
    Each refusal is counted in the driver's `stats` and logged, rate-limited; `holding`
    says what the driver does meanwhile.
    """
    backoff = Backoff(0.2, 10.0)
    while True:
        try:
            await sink.put(readings)
            return
        except (BufferFull, StorageError) as exc:
            stats.failed(str(exc))
            delay = backoff.next_delay()
            log.warning(
                "not-accepted",
                f"buffer did not accept readings; {holding}",
                driver=driver,
                error=str(exc),
                readings=len(readings),
                retry_in_s=round(delay, 2),
            )
            await asyncio.sleep(delay)


class Outbox:
    """Readings a driver read but the buffer has not yet taken; bounded, in arrival order.

    A device cannot be asked to send again, so these must outlive the task that delivers
    them: a batch leaves the outbox only once the buffer has it. A cancel during a put (a
    reload, a stop, a restart after a failure) leaves it here, to be put again by the next
    `deliver` or handed on with `take()`, unless the buffer had begun its commit
    (`AcceptedThenCancelled`): each reading is accepted once, under one id.
    """

    def __init__(
        self,
        limit: int,
        sink: Sink,
        driver: str,
        stats: DriverStats,
        log: RateLimitedLog,
        holding: str = "holding them",
    ) -> None:
        """`stats` counts what `sink` accepted and each refusal; `holding` says in the log
        what the driver does while the sink refuses."""
        self.limit = limit
        self._sink = sink
        self._driver = driver
        self._stats = stats
        self._log = log
        self._holding = holding
        self._held: list[Reading] = []
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()

    def __len__(self) -> int:
        return len(self._held)

    def add(self, readings: Sequence[Reading]) -> bool:
        """Hold `readings` for delivery, all or none: False when they would pass `limit`.

        The caller counts what was refused (its overflow); nothing is dropped silently.
        """
        if len(self._held) + len(readings) > self.limit:
            return False
        if readings:
            self._held.extend(readings)
            self._arrived.set()
        return True

    def take(self) -> list[Reading]:
        """Everything held, leaving the outbox empty; for a driver whose task has ended."""
        held, self._held = self._held, []
        self._taken.set()
        return held

    async def wait_for_room(self) -> None:
        """Return once the outbox is below its limit: a driver that can pause, pauses."""
        while len(self._held) >= self.limit:
            self._taken.clear()
            await self._taken.wait()

    async def deliver_while(self, read: Callable[[], Awaitable[None]]) -> None:
        """A driver's `run()`: `read` (its device loop) with `deliver` beside it.

        One TaskGroup owns both, so a failure of either stops the other and is raised (the
        supervisor restarts the driver; the outbox keeps what was not put). The driver's
        state shows "stopped" once it ends, however it ends.
        """
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.deliver())
                await read()
        finally:
            self._stats.state = "stopped"

    async def deliver(self) -> None:
        """Put what is held into the sink, oldest first, for ever; wait out refusals.

        Readings added during a put go in the next one, so a slow disk means fewer,
        larger commits.
        """
        while True:
            while not self._held:
                self._arrived.clear()
                await self._arrived.wait()
            batch = self._held[:]
            try:
                await put_until_accepted(
                    self._sink, batch, self._driver, self._stats, self._log, self._holding
                )
            except AcceptedThenCancelled:
                self._delivered(batch)  # on disk: not to be handed on and put twice
                raise
            self._delivered(batch)

    def _delivered(self, batch: list[Reading]) -> None:
        del self._held[: len(batch)]
        self._taken.set()
        self._stats.read(len(batch))
