"""The rate limiter behind the BLE driver's warnings keeps the log and its own memory bounded."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from gateway import logs
from gateway.logs import RateLimitedLog


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(logs.time, "monotonic", clock)
    return clock


def test_many_keys_within_one_interval_keep_memory_and_warnings_bounded(clock: _Clock) -> None:
    limited = RateLimitedLog(structlog.get_logger("test"), interval=10.0)
    with capture_logs() as captured:
        for n in range(50_000):
            limited.warning(f"key-{n}", "bad input", n=n)
            clock.now += 0.0001  # all 50,000 within five seconds
    assert len(limited._last) <= 300 and len(limited._suppressed) <= 300  # "a few hundred"
    assert len(captured) <= 300


def test_keys_older_than_the_interval_are_dropped_and_log_again_later(clock: _Clock) -> None:
    limited = RateLimitedLog(structlog.get_logger("test"), interval=10.0)
    with capture_logs() as captured:
        for n in range(200):
            limited.warning(f"old-{n}", "bad input")
        clock.now += 11.0
        for n in range(200):
            limited.warning(f"new-{n}", "bad input")
        limited.warning("old-0", "bad input")
    assert len(captured) == 401  # nothing was suppressed
    assert len(limited._last) <= 300


def test_a_repeated_key_is_still_suppressed_and_the_count_reported(clock: _Clock) -> None:
    limited = RateLimitedLog(structlog.get_logger("test"), interval=10.0)
    with capture_logs() as captured:
        for _ in range(5):
            limited.warning("one", "bad input")
        clock.now += 10.0
        limited.warning("one", "bad input")
    assert [e.get("suppressed_since_last") for e in captured] == [None, 4]
