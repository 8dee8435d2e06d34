"""What every driver shares: where its readings go and how it reports its health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from gateway.backoff import Backoff
from gateway.errors import BufferFull, StorageError
from gateway.logs import RateLimitedLog
from gateway.model import Reading


class Sink(Protocol):
    """Where a driver hands readings. `put` returns once they are on disk (the buffer).

    It raises `BufferFull` or `StorageError` when they were not accepted; the
    driver must then not acknowledge its source, and retry later.
    """

    async def put(self, readings: Sequence[Reading]) -> None: ...


class Driver(Protocol):
    """One transport instance. `run()` works until cancelled; raising means "restart me"."""

    name: str
    stats: DriverStats

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
    counters: dict[str, int] = field(default_factory=dict)

    def read(self, count: int) -> None:
        self.readings += count
        self.last_reading = time.time()

    def failed(self, message: str) -> None:
        self.errors += 1
        self.last_error = message

    def bump(self, counter: str, n: int = 1) -> None:
        """Add `n` to a named counter (`counters`, shown by `edge-gateway status`)."""
        self.counters[counter] = self.counters.get(counter, 0) + n

    def snapshot(self) -> dict[str, Any]:
        return asdict(self)


async def put_until_accepted(
    sink: Sink,
    readings: Sequence[Reading],
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
