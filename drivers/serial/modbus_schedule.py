"""When each unit of a bus is polled next: its interval, and backoff while it does not answer.

Pure bookkeeping on a monotonic clock (the source passes `now`), so the policy that keeps
one dead unit from eating the bus time of the others is tested without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.serial.modbus_config import ModbusUnit
from drivers.serial.modbus_registers import Block


@dataclass(slots=True)
class UnitSchedule:
    """A unit's schedule: when it is due next, and how many polls in a row it missed."""

    config: ModbusUnit
    blocks: tuple[Block, ...]
    due: float = 0.0
    failures: int = 0

    def answered(self, now: float) -> bool:
        """Schedule the next poll; True if the unit had been failing until now.

        The schedule keeps its phase: a poll delayed by another unit's timeouts is
        followed by the next one on time (or at once, when that time has passed too).
        """
        self.due = max(self.due + self.config.poll_interval_s, now)
        recovered, self.failures = self.failures > 0, 0
        return recovered

    def missed(self, now: float) -> float:
        """Back the unit off: its interval doubles per missed poll, up to `max_backoff_s`."""
        self.failures += 1
        interval = self.config.poll_interval_s
        delay = max(
            interval, min(self.config.max_backoff_s, interval * 2.0 ** min(self.failures, 32))
        )
        self.due = now + delay
        return delay
