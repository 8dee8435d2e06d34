"""What every driver shares (drivers/base.py): its counters and how it holds readings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import structlog
from commit_hold import hold_commits

import gateway.buffer
from drivers.base import DriverStats, Outbox
from gateway.buffer import Buffer
from gateway.errors import BufferFull
from gateway.logs import RateLimitedLog
from gateway.model import Reading, utc_from_epoch


def test_bump_adds_to_a_named_counter_starting_at_zero() -> None:
    stats = DriverStats("serial")
    stats.bump("partial")
    stats.bump("partial")
    stats.bump("overflow", 5)
    assert stats.counters == {"partial": 2, "overflow": 5}


def _readings(*seqs: int) -> list[Reading]:
    return [
        Reading(device="d", ts=utc_from_epoch(1.7e9), values={"seq": s}, source="t") for s in seqs
    ]


class _Refusing:
    """A sink that refuses, as a full buffer does, while `refuse` is set; keeps what it took."""

    def __init__(self) -> None:
        self.refuse = True
        self.refused = asyncio.Event()
        self.taken: list[Reading] = []
        self.took = asyncio.Event()

    async def put(self, readings: Sequence[Reading]) -> None:
        if self.refuse:
            self.refused.set()
            raise BufferFull("buffer full (test)")
        self.taken.extend(readings)
        self.took.set()


def _outbox(limit: int = 10) -> tuple[Outbox, _Refusing, DriverStats]:
    sink, stats = _Refusing(), DriverStats("serial")
    log = RateLimitedLog(structlog.get_logger("test"))
    return Outbox(limit, sink, "t", stats, log), sink, stats


async def test_a_delivery_cancelled_while_the_buffer_refuses_keeps_the_batch() -> None:
    outbox, sink, _ = _outbox()
    assert outbox.add(_readings(1, 2))
    task = asyncio.create_task(outbox.deliver())
    await sink.refused.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outbox.take() == _readings(1, 2)
    assert len(outbox) == 0


async def test_the_next_delivery_puts_what_a_cancelled_one_held_in_order() -> None:
    outbox, sink, stats = _outbox()
    outbox.add(_readings(1))
    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(outbox.deliver())
        await sink.refused.wait()
        task.cancel()
    outbox.add(_readings(2))
    sink.refuse = False
    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(outbox.deliver())
        async with asyncio.timeout(5):
            await sink.took.wait()
        task.cancel()
    assert sink.taken == _readings(1, 2)
    assert stats.readings == 2


def test_an_outbox_refuses_what_would_pass_its_limit_whole() -> None:
    outbox, _, _ = _outbox(limit=3)
    assert outbox.add(_readings(1, 2))
    assert not outbox.add(_readings(3, 4))
    assert outbox.add(_readings(3))
    assert outbox.take() == _readings(1, 2, 3)


async def test_a_driver_run_delivers_beside_its_read_loop_and_ends_stopped() -> None:
    outbox, sink, stats = _outbox()
    sink.refuse = False

    async def read() -> None:
        outbox.add(_readings(1))
        await sink.took.wait()
        raise OSError("device gone")

    with pytest.raises(ExceptionGroup):
        await outbox.deliver_while(read)
    assert sink.taken == _readings(1)
    assert stats.state == "stopped"


async def _a_cancelled_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commit_begun: bool
) -> tuple[Outbox, list[tuple[int, int]]]:
    """A driver's delivery of two readings into a real buffer, cancelled (a reload) while
    its put waits for the group commit, or while that commit runs; then what it still holds
    is handed on and put, as the supervisor does. (id seq, reading's own seq) of each stored."""
    async with Buffer(tmp_path / "buffer.db", max_bytes=10**8, commit_interval=1.0) as buffer:
        await buffer.put(_readings(0))  # a commit just happened: the next one gathers 1 s
        begun, finish = hold_commits(buffer, monkeypatch)
        outbox = Outbox(
            100, buffer, "t", DriverStats("serial"), RateLimitedLog(structlog.get_logger())
        )
        outbox.add(_readings(1, 2))
        delivery = asyncio.create_task(outbox.deliver())
        if commit_begun:
            await asyncio.to_thread(begun.wait, 5)
        else:
            await asyncio.sleep(0.005)  # queued, gathering
            assert not begun.is_set()
        delivery.cancel()
        finish.set()
        await asyncio.gather(delivery, return_exceptions=True)
        assert delivery.cancelled()
        handed_on = outbox.take()
        if handed_on:
            await buffer.put(handed_on)
        chunks = await buffer.fetch(0, 100)
    stored = [(r.seq, json.loads(r.body)["values"]["seq"]) for c in chunks for r in c.readings]
    return outbox, stored


@pytest.mark.parametrize("commit_begun", [False, True])
async def test_a_delivery_cancelled_while_its_put_waits_for_the_commit_puts_each_reading_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commit_begun: bool
) -> None:
    """The buffer committed a cancelled put all the same, and the outbox kept and handed on
    the batch: each reading twice, under two ids (a chaos soak's reloads). Before its commit
    begins the put is taken back; once it has begun, the outbox learns that it went in."""
    outbox, stored = await _a_cancelled_delivery(tmp_path, monkeypatch, commit_begun)
    assert stored == [(1, 0), (2, 1), (3, 2)]  # the earlier reading, then the two: once each
    assert outbox._stats.readings == (2 if commit_begun else 0)


async def test_a_cancelled_delivery_waits_for_a_hung_commit_only_so_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that hangs a commit must not hang a reload or a stop: after a while the put
    gives up on learning the outcome, and the outbox keeps the batch (a duplicate at worst,
    if the commit ends after all; never a loss)."""
    monkeypatch.setattr(gateway.buffer, "_CANCEL_WAIT_S", 0.3)
    async with Buffer(tmp_path / "buffer.db", max_bytes=10**8, commit_interval=0) as buffer:
        begun, finish = hold_commits(buffer, monkeypatch)
        stats = DriverStats("serial")
        outbox = Outbox(100, buffer, "t", stats, RateLimitedLog(structlog.get_logger()))
        outbox.add(_readings(1, 2))
        delivery = asyncio.create_task(outbox.deliver())
        await asyncio.to_thread(begun.wait, 5)
        delivery.cancel()
        done, _ = await asyncio.wait([delivery], timeout=3)
        finish.set()
    assert done and delivery.cancelled()
    assert len(outbox) == 2
