"""How the publisher waits for work: for new readings, or, with its retry memory full, only
for the next retry to fall due (never in a busy loop)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from gateway import publisher
from gateway.buffer import Buffer
from gateway.config import AmqpSection, GatewaySection
from gateway.model import Reading
from gateway.publisher import Batch, Publisher


async def test_a_full_retry_memory_waits_for_the_due_retry_not_for_new_readings(
    tmp_path: Path,
) -> None:
    async with Buffer(tmp_path / "buffer.db", max_bytes=1 << 20, commit_interval=0) as buffer:
        await buffer.put([Reading("dev", datetime.now(UTC), {"n": 1}, "src")])  # new data
        sender = Publisher(AmqpSection(), GatewaySection(id="gw"), buffer)
        waits_for_data = 0
        wait_for_data = buffer.wait_for_data

        async def counted(after_seq: int) -> None:
            nonlocal waits_for_data
            waits_for_data += 1
            await wait_for_data(after_seq)

        buffer.wait_for_data = counted  # type: ignore[method-assign]
        due = asyncio.get_running_loop().time() + 0.3
        returned = Batch(due, 1, "key", b"{}", "id", publisher.MAX_RETRY_READINGS, {1: 1})
        sender._park(returned)  # e.g. unroutable readings, waiting for their retry
        batch = await asyncio.wait_for(sender._next_batch(), 5)
    assert batch is returned
    assert waits_for_data == 0  # it spun, thousands of times, before


async def test_a_reading_too_large_for_the_broker_is_tried_ever_more_rarely(
    tmp_path: Path,
) -> None:
    """Each try closes the channel (a reconnect): past retry_max_s, up to 10 minutes apart."""
    async with Buffer(tmp_path / "buffer.db", max_bytes=1 << 20, commit_interval=0) as buffer:
        sender = Publisher(AmqpSection(retry_max_s=15), GatewaySection(id="gw"), buffer)
        big = Batch(0.0, 1, "key", b"x" * 100, "id", 1, {1: 1})
        sender._max_body = 50  # as learned from the broker
        now = asyncio.get_running_loop().time()
        delays = []
        for _ in range(14):
            sender._too_large(big)
            delays.append(big.due - now)
            sender._retry.clear()  # taken out again, as the pump does to try it
    assert sender.counters.too_large == 14
    assert max(delays) > 15  # beyond retry_max_s
    assert delays[-1] >= publisher.TOO_LARGE_RETRY_MAX_S / 2  # jitter: 50-100 % of the cap
    assert max(delays) <= publisher.TOO_LARGE_RETRY_MAX_S
