"""The supervisor restarts a failed driver; a stop (cancelling the supervisor) ends it, also a
driver that swallows a cancel."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import gateway.supervisor
from drivers.base import DriverStats, Outbox
from drivers.mqtt.config import MqttDriverConfig
from gateway.buffer import Buffer
from gateway.logs import RateLimitedLog
from gateway.model import Reading
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


class _Stopped:
    """A driver stopped for good, its outbox holding two readings."""

    name = "stopped"

    def __init__(self, sink: Buffer) -> None:
        self.stats = DriverStats(type="serial")
        self.outbox = Outbox(
            10, sink, self.name, self.stats, RateLimitedLog(gateway.supervisor.log)
        )
        self.outbox.add([_reading(1), _reading(2)])


def _reading(seq: int) -> Reading:
    return Reading("d", datetime(2026, 1, 1, tzinfo=UTC), {"seq": seq}, "stopped")


async def test_a_last_put_cancelled_before_its_commit_keeps_the_readings_for_the_next_stop(
    tmp_path: Path,
) -> None:
    """The buffer takes back a put cancelled before its commit began; the readings the last
    put had taken from the outbox were then nowhere (a sibling task failing during a stop
    cancels it), and the stop after it found nothing to put."""
    async with Buffer(tmp_path / "buffer.db", max_bytes=10**8, commit_interval=1.0) as buffer:
        async with asyncio.TaskGroup() as tasks:
            supervisor = DriverSupervisor(tasks, "gw", buffer)
            driver = _Stopped(buffer)
            await buffer.put([_reading(0)])  # a commit now: the next one gathers 1 s
            last_put = asyncio.create_task(supervisor._last_put(driver))
            await asyncio.sleep(0.01)  # the put is queued, the commit gathers for 1 s
            last_put.cancel()
            await asyncio.gather(last_put, return_exceptions=True)
            assert len(driver.outbox) == 2
            await supervisor._last_put(driver)  # the stop after it
        chunks = await buffer.fetch(0, 10)
    assert [json.loads(r.body)["values"]["seq"] for c in chunks for r in c.readings] == [0, 1, 2]
    assert driver.stats.readings == 2
