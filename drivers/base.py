"""What every driver shares: where its readings go and how it reports its health."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

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

    def snapshot(self) -> dict[str, Any]:
        return asdict(self)
