"""Backoff: exponential with jitter, and afresh after a run that was healthy for a while."""

from __future__ import annotations

import time

from gateway.backoff import HEALTHY_RUN_S, Backoff


def _failed_five_times() -> Backoff:
    backoff = Backoff(1.0, 60.0)
    for _ in range(5):
        backoff.next_delay()
    return backoff


def test_after_a_healthy_run_the_backoff_starts_afresh() -> None:
    started = time.monotonic() - HEALTHY_RUN_S - 1
    assert _failed_five_times().delay_after(started) <= 1.0


def test_a_run_that_fails_at_once_is_retried_ever_more_slowly() -> None:
    assert _failed_five_times().delay_after(time.monotonic()) >= 16.0  # 32 s, jitter 0.5..1
