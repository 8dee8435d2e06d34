"""A counting consumer at the far end: what the cloud would receive from the gateway.

Tests, the benchmark and the demo use it to check "every reading arrived, how many
twice" without trusting the gateway's own counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from gateway.broker import open_connection


@dataclass(slots=True)
class Received:
    """What arrived: distinct samples, duplicates, and each device's sequence numbers.

    A sample is a (device, seq) pair from the simulator. It can arrive twice with
    the same reading id (the gateway re-sent it after a crash or a lost confirm)
    or with two ids (the MQTT broker re-sent it before the gateway acknowledged);
    both count as duplicates.
    """

    messages: int = 0
    readings: int = 0
    unique: int = 0
    duplicates: int = 0
    ids: set[str] = field(default_factory=set)
    seqs: dict[str, set[int]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    """Every distinct reading, when the collector was asked to keep them."""

    def missing(self, last_seq: dict[str, int] | Any) -> dict[str, list[int]]:
        """Per device, the seqs in 1..last_seq that never arrived."""
        gaps = {}
        for device, last in dict(last_seq).items():
            seen = self.seqs.get(device, set())
            lost = [s for s in range(1, last + 1) if s not in seen]
            if lost:
                gaps[device] = lost
        return gaps


class ReadingCollector:
    """Binds a durable queue to the gateway's exchange and counts what arrives.

    The queue is durable, so a broker restart in a fault test loses nothing on
    this side either, and the collector subscribes again itself after a lost
    connection: aio-pika's robust connection once came back in CI without its
    consumer, and the test then waited for readings that sat in the queue.
    """

    def __init__(
        self,
        url: str,
        exchange: str,
        *,
        queue: str = "collector",
        binding: str = "#",
        validate: Callable[[Any], None] | None = None,
        measure_latency: bool = False,
        keep_readings: bool = False,
    ) -> None:
        self.url = url
        self.exchange = exchange
        self.queue_name = queue
        self.binding = binding
        self.validate = validate
        self.measure_latency = measure_latency
        self.keep_readings = keep_readings
        self.received = Received()
        self._connection: AbstractConnection | None = None
        self._lost = asyncio.Event()
        self._resubscriber: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> ReadingCollector:
        await self._subscribe()
        self._resubscriber = asyncio.create_task(self._resubscribe())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._resubscriber is not None:
            self._resubscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resubscriber
        if self._connection is not None:
            await self._connection.close()

    async def _subscribe(self) -> None:
        connection = await open_connection(self.url, 10)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1000)
            exchange = await channel.declare_exchange(
                self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(self.queue_name, durable=True)
            await queue.bind(exchange, self.binding)
            await queue.consume(self._on_message)
        except BaseException:
            await connection.close()
            raise
        self._lost.clear()
        connection.close_callbacks.add(lambda *_: self._lost.set())
        self._connection = connection

    async def _resubscribe(self) -> None:
        """Subscribe again, every half second until it works, after the connection is lost."""
        while True:
            await self._lost.wait()
            if self._connection is not None:  # lost: settle it here, not in aio-pika's __del__
                with contextlib.suppress(Exception):
                    await self._connection.close()
                self._connection = None
            try:
                await self._subscribe()
            except (OSError, TimeoutError, aio_pika.exceptions.AMQPError):
                await asyncio.sleep(0.5)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        now = time.time()
        got = self.received
        try:
            body = json.loads(message.body)
            if self.validate is not None:
                self.validate(body)
        except Exception as exc:  # any failure is a finding the test reports
            got.invalid.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            await message.ack()
            return
        got.messages += 1
        for reading in body["readings"]:
            got.readings += 1
            seq = reading["values"].get("seq")
            seen = got.seqs.setdefault(reading["device"], set())
            if reading["id"] in got.ids or seq in seen:
                got.duplicates += 1
                continue
            got.ids.add(reading["id"])
            got.unique += 1
            if self.keep_readings:
                got.kept.append(reading)
            if isinstance(seq, int):
                seen.add(seq)
            if self.measure_latency:
                latency = _latency(now, reading)
                if latency is not None:
                    got.latencies.append(latency)
        await message.ack()
        self._changed.set()

    async def wait_until(
        self,
        done: Callable[[Received], bool],
        timeout: float,  # noqa: ASYNC109 (seconds, as it always was)
    ) -> bool:
        """Wait until `done(received)` holds; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while not done(self.received):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
            except TimeoutError:
                pass
        return True


def _latency(now: float, reading: dict[str, Any]) -> float | None:
    """Seconds from the sample to its arrival here: from `values.sent` (epoch seconds) if the
    reading has one, else from its `ts` (RFC 3339, the simulator's sampling time)."""
    sent = reading["values"].get("sent")
    if isinstance(sent, int | float):
        return now - sent
    ts = reading.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        return now - datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return None
