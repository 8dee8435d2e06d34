"""Exponential backoff with jitter, so that many gateways do not retry in lockstep."""

from __future__ import annotations

import random


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
