"""What every driver shares (drivers/base.py): its counters and how it holds readings."""

from __future__ import annotations

from drivers.base import DriverStats


def test_bump_adds_to_a_named_counter_starting_at_zero() -> None:
    stats = DriverStats("serial")
    stats.bump("partial")
    stats.bump("partial")
    stats.bump("overflow", 5)
    assert stats.counters == {"partial": 2, "overflow": 5}
