"""The gateway as a systemd service: watchdog pings only while the pipeline moves, and STATUS.

systemd's watchdog restarts a service that stops pinging. Pinging from a timer alone
would only prove that the event loop turns; a gateway whose buffer writer hangs on
the disk, or whose uplink sits on unconfirmed messages, would look healthy for ever.
So each ping is conditional: the loop turned (this task ran), no `put()` waited for
its commit, and no publish waited for its confirm, longer than the stall limit.
Idle stages are healthy however long they idle.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from gateway.buffer import Buffer
from gateway.logs import RateLimitedLog
from gateway.notify import Notifier
from gateway.publisher import Publisher

log = structlog.get_logger("gateway.service")

STATUS_INTERVAL_S = 5.0
DEFAULT_STALL_S = 60.0
"""Without a watchdog (not under systemd), when `status` starts calling a stage stalled."""


@dataclass(frozen=True, slots=True)
class Rates:
    """Readings per second into the buffer and confirmed by the broker, over the last tick."""

    accepted: float
    published: float


class ServiceReporter:
    """Sends READY once, then STATUS and (while alive) WATCHDOG=1 every tick until cancelled."""

    def __init__(self, notifier: Notifier, buffer: Buffer, publisher: Publisher) -> None:
        self.notifier = notifier
        self.buffer = buffer
        self.publisher = publisher
        watchdog = notifier.watchdog_s
        self.stall_s = watchdog if watchdog is not None else DEFAULT_STALL_S
        # Several pings per period: one late tick must not cost a restart.
        self.interval_s = min(STATUS_INTERVAL_S, watchdog / 3) if watchdog else STATUS_INTERVAL_S
        self._rate_limited = RateLimitedLog(log, 30.0)
        self._last = (
            time.monotonic(),
            buffer.counters.accepted,
            publisher.counters.published_readings,
        )

    def stalled(self) -> str | None:
        """Which stage has had work waiting, without anything settling, beyond the limit."""
        now = time.monotonic()
        for stage, progress in (
            ("buffer writer", self.buffer.progress),
            ("buffer reader", self.buffer.read_progress),
            ("publisher", self.publisher.progress),
        ):
            stuck = progress.stuck_for(now)
            if stuck > self.stall_s:
                return f"{stage} stalled: {progress.busy} waiting for {stuck:.0f} s"
        return None

    def rates(self) -> Rates:
        now = time.monotonic()
        accepted = self.buffer.counters.accepted
        published = self.publisher.counters.published_readings
        then, accepted_then, published_then = self._last
        self._last = (now, accepted, published)
        elapsed = max(now - then, 1e-3)
        return Rates((accepted - accepted_then) / elapsed, (published - published_then) / elapsed)

    def status_line(self, stalled: str | None = None) -> str:
        """What `systemctl status edge-gateway` shows on its Status: line."""
        pub = self.publisher.counters
        uplink = f"uplink {pub.connected_url}" if pub.connected_url else "uplink DISCONNECTED"
        if pub.blocked:
            uplink += " (BLOCKED)"
        rates = self.rates()
        line = (
            f"{self.buffer.depth} buffered; {uplink}, {pub.in_flight} unconfirmed; "
            f"in {rates.accepted:.1f}/s, out {rates.published:.1f}/s"
        )
        return f"STALLED ({stalled}); {line}" if stalled else line

    async def run(self) -> None:
        """The ping loop. Cancel it to stop; the stop itself is announced by `stopping()`."""
        if self.notifier.watchdog_s is not None:
            log.info("systemd watchdog on", period_s=self.notifier.watchdog_s, stall_s=self.stall_s)
        while True:
            await asyncio.sleep(self.interval_s)
            stalled = self.stalled()
            if stalled is None:
                self.notifier.watchdog()
            else:
                self._rate_limited.error(
                    "stalled",
                    "pipeline stalled: not pinging the watchdog, systemd will restart the gateway",
                    problem=stalled,
                )
            self.notifier.status(self.status_line(stalled))
