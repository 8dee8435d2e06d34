"""The supervisor restarts a failed driver; a stop (cancelling the supervisor) ends it."""

from __future__ import annotations

import asyncio

from drivers.base import DriverStats
from gateway.supervisor import supervise


class _Flaky:
    """Fails its first run with a CancelledError of its own (a library future cancelled under
    it), then runs until stopped."""

    name = "flaky"
    outbox = None

    def __init__(self) -> None:
        self.stats = DriverStats(type="test")
        self.runs = 0
        self.running = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs == 1:
            raise asyncio.CancelledError
        self.running.set()
        await asyncio.Event().wait()


async def test_a_cancelled_error_from_inside_a_driver_restarts_it_and_a_stop_still_stops() -> None:
    driver = _Flaky()
    task = asyncio.create_task(supervise(driver))
    await asyncio.wait_for(driver.running.wait(), 5)  # restarted after its backoff
    assert driver.runs == 2
    assert (driver.stats.errors, driver.stats.last_error) == (
        1,
        "CancelledError: cancelled inside the driver",
    )
    task.cancel()  # the gateway stopping
    done, _ = await asyncio.wait([task], timeout=5)
    assert done and task.cancelled()
