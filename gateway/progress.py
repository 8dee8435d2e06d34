"""Work in hand and when it last moved: how the watchdog tells "idle" and "busy" from "wedged".

A stage that has nothing to do is healthy however long it waits; a stage with work
in hand is healthy while that work keeps finishing. `Progress` counts the work in
hand and the (monotonic) time something last finished or started from idle, at the
cost of two integer updates per unit of work, on the event loop.
"""

from __future__ import annotations

import time


class Progress:
    """`begin()` when a unit of work (a put, a publish) starts, `end()` when it settles."""

    __slots__ = ("busy", "moved")

    def __init__(self) -> None:
        self.busy = 0
        self.moved = time.monotonic()

    def begin(self) -> None:
        if self.busy == 0:
            self.moved = time.monotonic()
        self.busy += 1

    def end(self) -> None:
        self.busy -= 1
        self.moved = time.monotonic()

    def stuck_for(self, now: float) -> float:
        """Seconds that work has been waiting without anything settling; 0 when idle."""
        return now - self.moved if self.busy else 0.0
