"""The watchdog's view of the buffer's reader: a fetch from disk that hangs (a failing SD
card) is a stall, even while puts go on and the publisher has nothing in flight."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path

from gateway.buffer import Buffer
from gateway.config import AmqpSection, GatewaySection
from gateway.model import Reading
from gateway.notify import Notifier
from gateway.publisher import Publisher
from gateway.service import ServiceReporter


def reading(i: int) -> Reading:
    return Reading(f"dev-{i}", datetime.now(UTC), {"i": i}, "test-src")


async def test_a_hung_fetch_from_disk_is_reported_as_a_stall_and_ends_when_it_moves(
    tmp_path: Path,
) -> None:
    db = tmp_path / "buffer.db"
    async with Buffer(db, max_bytes=1 << 20, commit_interval=0) as first:
        await first.put([reading(i) for i in range(5)])
    async with Buffer(db, max_bytes=1 << 20, commit_interval=0) as buffer:  # all on disk
        publisher = Publisher(AmqpSection(), GatewaySection(id="gw"), buffer)
        reporter = ServiceReporter(Notifier({"WATCHDOG_USEC": "200000"}), buffer, publisher)
        disk_answers = threading.Event()

        def slow_disk() -> int:  # SQLite calls this while it steps the query
            disk_answers.wait()
            return 0  # go on

        assert buffer._reader is not None
        buffer._reader.set_progress_handler(slow_disk, 1)
        fetch = asyncio.create_task(buffer.fetch(0, 100))
        await asyncio.sleep(0.5)
        stalled = reporter.stalled()
        await buffer.put([reading(9)])  # the writer is fine meanwhile
        disk_answers.set()
        chunks = await fetch
        assert reporter.stalled() is None
    assert stalled is not None and stalled.startswith("buffer reader stalled: 1 waiting for")
    assert [r.seq for chunk in chunks for r in chunk.readings] == [1, 2, 3, 4, 5]
