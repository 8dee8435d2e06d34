"""The supervisor restarts a failed driver; a stop (cancelling the supervisor) ends it, also a
driver that swallows a cancel."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

import gateway.supervisor
from drivers.base import DriverStats
from drivers.mqtt.config import MqttDriverConfig
from gateway.supervisor import DriverSupervisor, supervise


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


class _Stubborn:
    """Swallows its first cancel, as pymodbus's `asyncio.wait_for` did on Python 3.11 when a
    cancel came as an answer arrived, and goes on polling."""

    name = "stubborn"
    outbox = None

    def __init__(self) -> None:
        self.stats = DriverStats(type="test")
        self.running = asyncio.Event()

    async def run(self) -> None:
        self.running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        await asyncio.Event().wait()


async def test_a_driver_that_swallows_its_cancel_is_cancelled_again_not_waited_for_ever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reload or a stop waited for such a driver for ever (a chaos soak's reload wedged
    three drivers, and SIGTERM did not end the gateway)."""
    monkeypatch.setattr(gateway.supervisor, "STOP_WAIT_S", 0.2)
    driver = _Stubborn()
    config = MqttDriverConfig.model_validate(
        {"type": "mqtt", "name": "stubborn", "subscriptions": [{"topic": "t/#"}]}
    )
    with capture_logs() as logs:
        async with asyncio.TaskGroup() as tasks:
            supervisor = DriverSupervisor(tasks, "gw", sink=None)  # type: ignore[arg-type]
            supervisor._start(config, driver)
            await asyncio.wait_for(driver.running.wait(), 5)
            async with asyncio.timeout(5):
                await supervisor.stop()
    [warned] = [e for e in logs if e["event"].startswith("driver did not stop")]
    assert warned["driver"] == "stubborn"
