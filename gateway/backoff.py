"""Exponential backoff with jitter, so that many gateways do not retry in lockstep."""

from __future__ import annotations

import random
import time

HEALTHY_RUN_S = 60.0
"""A run this long was a success that ended: the next failure starts the backoff afresh."""


class Backoff:
    """Delays of `initial * 2**n`, capped at `maximum`, each scaled by a random 0.5..1.0."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = max(initial, maximum)
        self.failures = 0

    def next_delay(self) -> float:
        delay: float = min(self.maximum, self.initial * 2 ** min(self.failures, 32))
        self.failures += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0

    def delay_after(self, started: float, healthy_s: float = HEALTHY_RUN_S) -> float:
        """The delay before retrying what started at `started` (`time.monotonic()`) and ended.

        A run longer than `healthy_s` resets the backoff; one that fails at once (a
        flapping device, a crashing driver) is retried ever more slowly instead.
        """
        if time.monotonic() - started > healthy_s:
            self.reset()
        return self.next_delay()
