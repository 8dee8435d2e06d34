"""The AMQP publisher: drains the buffer to the broker, deleting only what is confirmed.

A batch (one AMQP message) is readings of one routing key, in buffer order. It is
built once and kept until the broker confirms it, so its `message_id` is stable
across retries. Nacks and returns (unroutable with `mandatory`) put the batch
back with a per-batch backoff; connection trouble puts every batch in flight back
and reconnects, trying the broker URLs in turn.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import sys
import time
from collections import deque
from collections.abc import Awaitable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from itertools import cycle
from typing import TypeVar

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from yarl import URL

from gateway.backoff import HEALTHY_RUN_S, Backoff
from gateway.broker import (
    CONNECTION_ERRORS,
    PASSING,
    TOO_LARGE,
    UNREACHABLE,
    ConnectionLost,
    broker_max_size,
    connection_lost,
    explain,
    open_connection,
    shown_url,
)
from gateway.buffer import Buffer, StoredReading
from gateway.config import CLOSE_AT_STOP_S, AmqpSection, GatewaySection
from gateway.config_types import TlsConfig, read_secret
from gateway.logs import RateLimitedLog
from gateway.progress import Progress

log = structlog.get_logger("gateway.publisher")

MAX_ROUTING_KEY = 255
FETCH_READINGS = 1_000
"""Readings taken from the buffer at once, at most: enough for 10 full messages, and little
memory (fetching the whole window, 6,400 readings by default, cost 3 MB under overload)."""
TOO_LARGE_RETRY_MAX_S = 600.0
"""A reading larger than the broker takes waits for its settings to change: each try closes
the channel (a reconnect and a warning), so it is tried at most every 10 minutes."""
OUTAGE_LOG_INTERVAL_S = 60.0
"""The same trouble with the broker is logged at most once a minute (with the attempts since)."""
MAX_RETRY_READINGS = 20_000
"""Readings kept in memory for retry (e.g. returned as unroutable) before intake pauses."""
T = TypeVar("T")


@dataclass(order=True, slots=True)
class Batch:
    """One AMQP message's worth of readings."""

    due: float
    first_seq: int
    routing_key: str = field(compare=False)
    body: bytes = field(compare=False)
    message_id: str = field(compare=False)
    count: int = field(compare=False)
    chunks: dict[int, int] = field(compare=False)
    """Chunk first_seq -> how many of its readings this batch carries."""
    backoff: Backoff | None = field(default=None, compare=False)


@dataclass(slots=True)
class PublisherCounters:
    published_readings: int = 0
    published_messages: int = 0
    returned: int = 0
    nacked: int = 0
    too_large: int = 0
    """Publishes of a single reading larger than the broker's max_message_size."""
    connection_failures: int = 0
    in_flight: int = 0
    connected_url: str | None = None
    blocked: bool = False
    last_confirm: float = 0.0
    last_error: str | None = None
    """Why the last connection failed or ended: `status` shows it while disconnected."""


def _surface_failure(task: asyncio.Task[None], broken: asyncio.Future[BaseException]) -> None:
    """An unexpected error in a publish task ends the session (and is logged), not in silence."""
    error = None if task.cancelled() else task.exception()
    if error is None:
        return
    log.error(
        "publishing failed unexpectedly; reconnecting",
        exc_info=error,
        hint="a bug: please report it with this log; readings stay buffered",
    )
    if not broken.done():
        broken.set_result(error)


class Publisher:
    """Publishes buffered readings until cancelled or stopped; see `stop()`."""

    def __init__(self, config: AmqpSection, gateway: GatewaySection, buffer: Buffer) -> None:
        self.config = config
        self.gateway = gateway
        self.buffer = buffer
        self.counters = PublisherCounters()
        self.progress = Progress()
        """Publishes awaiting their confirm: the watchdog's view of the uplink."""
        self._pending: list[tuple[int, StoredReading]] = []
        self._ready: deque[Batch] = deque()
        self._retry: list[Batch] = []
        self._retry_readings = 0
        self._alarm_watch: asyncio.Future[None] | None = None
        """Waits for the end of the broker's resource alarm, shared by all who wait for it."""
        self._parked = asyncio.Event()
        """Set when a batch joins `_retry`: a fill waiting for new readings must see it."""
        self._cursor = 0
        self._outstanding: dict[int, int] = {}
        self._max_body = sys.maxsize
        """The broker's max_message_size, once it refused a larger message."""
        self._read_again = False
        """Batches in memory were built before `_max_body` was known: build them anew."""
        self._routing_keys: dict[tuple[str, str], str] = {}
        self._uplink_log = RateLimitedLog(log, interval=OUTAGE_LOG_INTERVAL_S)
        """For connection trouble; `_rate_limited` is for refused batches."""
        self._down_since: float | None = None
        """When the uplink last failed after it was up (it delivered, or a session lasted
        HEALTHY_RUN_S); None until then. A connect alone is no recovery: a broker that
        refuses every publish after a good connect is still down."""
        self._stopping = asyncio.Event()
        self._loop_time = asyncio.get_running_loop().time
        self._rate_limited = RateLimitedLog(log)
        self._head = (
            b'{"v":1,"gateway":'
            + json.dumps(gateway.id).encode()
            + b',"site":'
            + json.dumps(gateway.site).encode()
            + b',"readings":['
        )

    # --- lifetime ---------------------------------------------------------------

    async def run(self) -> None:
        """Connect, publish, and on failure reconnect with backoff, across the broker URLs."""
        backoff = Backoff(self.config.retry_initial_s, self.config.retry_max_s)
        for url in cycle(self.config.urls):
            if self._stopping.is_set():
                return
            started = time.monotonic()
            confirmed = self.counters.published_messages
            too_large, max_body = self.counters.too_large, self._max_body
            try:
                await self._session(url)
                return  # stopped
            except* (*CONNECTION_ERRORS, ConnectionLost) as group:
                error = group.exceptions[0]
            self.counters.connection_failures += 1
            self.counters.connected_url = None
            self._learn_max_size(error)
            refused_size = self.counters.too_large > too_large or self._max_body < max_body
            if self._read_again:
                self._forget_batches()
            delivered = self.counters.published_messages > confirmed
            if delivered:  # this failure starts the backoff afresh
                backoff.reset()
            if delivered or time.monotonic() - started > HEALTHY_RUN_S:
                self._down_since = None  # the uplink was up: an outage begins, logged at once
                self._uplink_log = RateLimitedLog(log, interval=OUTAGE_LOG_INTERVAL_S)
            # A session that opened but never delivered (a refused publish) grows the backoff,
            # unless it lasted long (an idle connection that ended).
            delay = backoff.delay_after(started)
            problem, hint = explain(error) or UNREACHABLE
            if refused_size:  # the channel closed: the error seen here may not say why
                problem, hint = TOO_LARGE
            self.counters.last_error = f"{problem} ({type(error).__name__}: {error})"
            if self._down_since is None:
                self._down_since = time.monotonic()
            log_it = (
                self._uplink_log.warning if (problem, hint) in PASSING else self._uplink_log.error
            )
            log_it(  # a day's outage logs ~1,400 lines, not 5,800 (retry_max_s 15)
                problem,
                f"{problem}; readings stay buffered",
                url=self._shown(url),
                error=f"{type(error).__name__}: {error}",
                retry_in_s=round(delay, 2),
                down_for_s=round(time.monotonic() - self._down_since),
                buffered=self.buffer.depth,
                hint=hint,
            )
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def stop(self) -> None:
        """Take no new batches; `run()` returns once the batches in flight are settled."""
        self._stopping.set()

    async def _session(self, url: str) -> None:
        connection = await self._connect(url)
        try:
            self.counters.connected_url = self._shown(url)
            channel = await self._deadline(connection.channel(publisher_confirms=True))
            exchange = await self._exchange(channel)
            outage: dict[str, float] = {}
            if self._down_since is not None:  # how long it has been down, what waits to go
                outage = {"down_for_s": round(time.monotonic() - self._down_since, 1)}
                outage["buffered"] = self.buffer.depth
            log.info(
                "connected to broker", url=self._shown(url), exchange=self.config.exchange, **outage
            )
            await self._pump(connection, exchange)
        finally:
            self.counters.connected_url = None
            self._requeue_ready()
            close_s = self.config.timeout_s
            if self._stopping.is_set():  # the stop's time is counted (GatewayConfig.stop_overrun_s)
                close_s = min(close_s, CLOSE_AT_STOP_S)
            with suppress(*CONNECTION_ERRORS):
                await asyncio.wait_for(connection.close(), close_s)

    def _shown(self, url: str) -> str:
        return shown_url(url, self.config.username)

    async def _connect(self, url: str) -> AbstractRobustConnection:
        tls = self.config.tls or TlsConfig()
        ssl_context = tls.client_context() if url.startswith("amqps") else None
        parsed = URL(url)
        if self.config.username is not None:
            parsed = parsed.with_user(self.config.username)
        if self.config.password_file is not None:
            parsed = parsed.with_password(read_secret(self.config.password_file))
        parsed = parsed.update_query(heartbeat=self.config.heartbeat_s)
        connection = await self._deadline(
            open_connection(
                parsed,
                self.config.timeout_s,
                ssl_context=ssl_context,
                client_properties={"connection_name": f"edge-gateway {self.gateway.id}"},
            )
        )
        return connection  # type: ignore[return-value]

    async def _exchange(self, channel: aio_pika.abc.AbstractChannel) -> AbstractExchange:
        if not self.config.declare_exchange:
            return await self._deadline(channel.get_exchange(self.config.exchange, ensure=False))
        return await self._deadline(
            channel.declare_exchange(
                self.config.exchange,
                aio_pika.ExchangeType(self.config.exchange_type),
                durable=True,
            )
        )

    async def _deadline(self, awaitable: Awaitable[T]) -> T:
        return await asyncio.wait_for(awaitable, self.config.timeout_s)

    # --- the pump ---------------------------------------------------------------

    async def _pump(self, connection: AbstractRobustConnection, exchange: AbstractExchange) -> None:
        """Keep up to `max_in_flight` publishes going until the connection breaks or we stop."""
        broken: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

        def on_close(_sender: object, exc: BaseException | None = None) -> None:
            if not broken.done():
                broken.set_result(exc or ConnectionLost("the connection closed"))

        connection.close_callbacks.add(on_close)
        window = asyncio.Semaphore(self.config.max_in_flight)
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                # Fast paths first: a task per wait would cost more than the publish itself.
                if window.locked():
                    await self._unless_broken(window.acquire(), broken)
                else:
                    await window.acquire()
                if not _ready_now(connection):
                    await self._unless_broken(self._alarm(connection), broken)
                batch = None if self._stopping.is_set() else self._batch_at_hand()
                if batch is None:
                    batch = await self._unless_broken(self._next_batch(), broken)
                if batch is None:
                    break  # stopping: settle what is in flight, below
                if len(batch.body) > self._max_body and in_flight:
                    # Known too large (`_too_large`): tried alone, so that the channel it
                    # closes carries nothing else (all of it would go again: duplicates).
                    await self._unless_broken(asyncio.wait(in_flight), broken)
                task = asyncio.create_task(
                    self._publish(connection, exchange, batch, window, broken)
                )
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(partial(_surface_failure, broken=broken))
            await asyncio.gather(*in_flight)  # each is bounded by timeout_s
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            if self._alarm_watch is not None:
                self._alarm_watch.cancel()
                await asyncio.gather(self._alarm_watch, return_exceptions=True)
                self._alarm_watch = None
            connection.close_callbacks.discard(on_close)

    @staticmethod
    async def _unless_broken(awaitable: Awaitable[T], broken: asyncio.Future[BaseException]) -> T:
        """Await, but raise `ConnectionLost` as soon as the connection breaks."""
        task = asyncio.ensure_future(awaitable)
        if broken.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise connection_lost(broken.result())
        try:
            await asyncio.wait((task, broken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.done() and not task.cancelled():
            return task.result()
        raise connection_lost(broken.result())

    def _alarm(self, connection: AbstractRobustConnection) -> asyncio.Future[None]:
        """Done when the broker lifts its resource alarm; one watch (and log line) for all."""
        if self._alarm_watch is None or self._alarm_watch.done():
            self._alarm_watch = asyncio.ensure_future(self._unblocked(connection))
        return asyncio.shield(self._alarm_watch)

    async def _unblocked(self, connection: AbstractRobustConnection) -> None:
        """Pause while the broker has said `connection.blocked` (a memory or disk alarm)."""
        underlay = connection.transport
        if underlay is None:
            raise ConnectionLost("the connection is closed")
        ready = asyncio.ensure_future(underlay.connection.ready())
        try:
            await asyncio.wait_for(asyncio.shield(ready), 0.001)
            return
        except TimeoutError:
            pass
        self.counters.blocked = True
        log.warning(
            "broker blocked publishing (resource alarm); readings stay buffered",
            hint="free memory or disk space on the broker",
        )
        try:
            await ready
        finally:
            ready.cancel()
            self.counters.blocked = False
        log.info("broker unblocked publishing")

    async def _publish(
        self,
        connection: AbstractRobustConnection,
        exchange: AbstractExchange,
        batch: Batch,
        window: asyncio.Semaphore,
        broken: asyncio.Future[BaseException],
    ) -> None:
        """Publish one batch and settle it: confirmed, kept for retry, or connection broken."""
        self.counters.in_flight += 1
        self.progress.begin()
        message = aio_pika.Message(
            batch.body,
            message_id=batch.message_id,
            timestamp=datetime.now(UTC),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            app_id="edge-gateway",
            headers={
                "gateway": self.gateway.id,
                "site": self.gateway.site,
                "readings": batch.count,
            },
        )
        try:
            result = await self._settled(
                exchange.publish(message, batch.routing_key, mandatory=True), connection
            )
        except aiormq.exceptions.DeliveryError as exc:
            self.counters.nacked += 1
            self._retry_later(
                batch,
                "broker refused the message (nack)",
                "a queue bound to the exchange is full and refuses new messages (x-overflow: "
                "reject-publish), or the broker could not store it; queues that took it get "
                "it again with the retry (duplicates)",
                error=str(exc),
            )
        except (*CONNECTION_ERRORS, ConnectionLost) as exc:
            self._learn_max_size(exc)
            if len(batch.body) > self._max_body:
                self._too_large(batch)
            else:
                self._retry_now(batch)
            if not broken.done():
                broken.set_result(exc)
        except BaseException:  # cancelled, or a bug: keep the batch, the pump sees the error
            self._retry_now(batch)
            raise
        else:
            if isinstance(result, aiormq.spec.Basic.Ack):
                self._confirmed(batch)
            else:
                self.counters.returned += 1
                self._retry_later(
                    batch,
                    "broker returned the message: no queue is bound for its routing key",
                    "bind a queue to the exchange for this routing key",
                )
        finally:
            self.counters.in_flight -= 1
            self.progress.end()
            window.release()

    async def _settled(self, publish: Awaitable[T], connection: AbstractRobustConnection) -> T:
        """A publish's confirm, within `timeout_s` of the broker being able to send it.

        A blocked connection (a resource alarm) is not read by RabbitMQ, so no confirm
        can come: the clock stops until the alarm ends. Timing out would only reconnect,
        be blocked again, and send the batch twice (every `timeout_s`, as long as the
        alarm lasted). Meanwhile the watchdog sees a wait, not a wedged publisher.
        """
        task = asyncio.ensure_future(publish)
        try:
            while True:
                done, _ = await asyncio.wait((task,), timeout=self.config.timeout_s)
                if done:
                    return task.result()
                if _ready_now(connection):
                    raise TimeoutError(
                        f"no confirm within amqp.timeout_s ({self.config.timeout_s} s)"
                    )
                alarm = self._alarm(connection)
                self.progress.end()
                try:
                    await asyncio.wait((task, alarm), return_when=asyncio.FIRST_COMPLETED)
                    if alarm.done():
                        alarm.result()  # ConnectionLost if it closed meanwhile
                finally:
                    self.progress.begin()
                    alarm.cancel()  # our view of the shared watch, not the watch
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            elif not task.cancelled():
                task.exception()  # we were cancelled as it failed: its error is the pump's now

    def _confirmed(self, batch: Batch) -> None:
        self.counters.published_readings += batch.count
        self.counters.published_messages += 1
        self.counters.last_confirm = time.time()
        done = []
        for first_seq, count in batch.chunks.items():
            left = self._outstanding[first_seq] - count
            if left:
                self._outstanding[first_seq] = left
            else:
                del self._outstanding[first_seq]
                done.append(first_seq)
        if done:
            self.buffer.ack(done)

    def _learn_max_size(self, error: BaseException) -> None:
        """RabbitMQ closes the channel on a message larger than its max_message_size, and
        says so once: every batch built before is suspect, and built anew from the buffer
        (`_forget_batches`) when the session has ended."""
        limit = broker_max_size(error)
        if limit is None or limit >= self._max_body:
            return
        self._max_body = limit
        self._read_again = True
        log.warning(
            "the broker refuses messages larger than its max_message_size: sending smaller ones",
            max_message_size=limit,
            hint="lower amqp.batch.max_bytes below it, or raise max_message_size on the broker",
        )

    def _too_large(self, batch: Batch) -> None:
        """A batch larger than the broker takes. Several readings are batched anew; one
        reading alone waits with its backoff for the limit to be raised (the pump tries it
        with nothing else in flight), so that the rest flows meanwhile."""
        if batch.count > 1:
            self._retry_now(batch)  # dropped with all others by `_forget_batches`
            return
        self.counters.too_large += 1
        if batch.backoff is None:
            batch.backoff = Backoff(self.config.retry_initial_s, TOO_LARGE_RETRY_MAX_S)
        self._retry_later(
            batch,
            "a reading is larger than the broker's max_message_size",
            "it stays buffered; raise max_message_size on the broker (RabbitMQ: "
            "max_message_size in rabbitmq.conf), or make the sensor's payloads smaller",
            error=f"message of {len(batch.body)} bytes, broker limit {self._max_body}",
        )

    def _forget_batches(self) -> None:
        """Drop every batch in memory and read what is unconfirmed from the buffer again.

        Readings of a chunk partly confirmed go again (duplicates, as after a restart).
        """
        self._read_again = False
        self._ready.clear()
        self._retry.clear()
        self._retry_readings = 0
        self._pending.clear()
        self._outstanding.clear()
        self._cursor = 0

    def _retry_later(self, batch: Batch, problem: str, hint: str, error: str | None = None) -> None:
        if batch.backoff is None:
            batch.backoff = Backoff(self.config.retry_initial_s, self.config.retry_max_s)
        delay = batch.backoff.next_delay()
        batch.due = self._loop_time() + delay
        self._park(batch)
        self._rate_limited.warning(
            f"{problem}:{batch.routing_key}",
            problem + "; kept in the buffer for retry",
            exchange=self.config.exchange,
            routing_key=batch.routing_key,
            readings=batch.count,
            retry_in_s=round(delay, 2),
            hint=hint,
            **({"error": error} if error else {}),
        )

    def _retry_now(self, batch: Batch) -> None:
        batch.due = 0.0
        self._park(batch)

    def _park(self, batch: Batch) -> None:
        heapq.heappush(self._retry, batch)
        self._retry_readings += batch.count
        self._parked.set()

    def _requeue_ready(self) -> None:
        while self._ready:
            self._retry_now(self._ready.popleft())

    # --- batching ----------------------------------------------------------------

    async def _next_batch(self) -> Batch | None:
        """The next batch to send: a due retry first, then new readings; None when stopping."""
        while not self._stopping.is_set():
            batch = self._batch_at_hand()
            if batch is not None:
                return batch
            await self._fill()
        return None

    def _batch_at_hand(self) -> Batch | None:
        """A due retry, else a batch already built; None when either needs waiting for."""
        if self._retry and self._retry[0].due <= self._loop_time():
            batch = heapq.heappop(self._retry)
            self._retry_readings -= batch.count
            return batch
        return self._ready.popleft() if self._ready else None

    async def _fill(self) -> None:
        """Fetch readings from the buffer into batches, or wait for data or a due retry.

        Cancellation-safe: fetched readings live in `self._pending` from the moment
        the cursor passes them, so an interrupted fill loses nothing.
        """
        self._parked.clear()  # a batch parked from here on cuts the wait below short
        budget = min(self.config.max_in_flight * self.config.batch.max_readings, FETCH_READINGS)
        if self._retry_readings >= MAX_RETRY_READINGS:
            budget = 0  # memory stays bounded; the rest waits on disk
        await self._fetch(budget - len(self._pending))
        if self._pending and len(self._pending) < self.config.batch.max_readings:
            await asyncio.sleep(self.config.batch.linger_ms / 1000)
            await self._fetch(budget - len(self._pending))
        if self._pending:
            pending, self._pending = self._pending, []
            self._ready.extend(self._batches(pending))
            return
        waits: list[asyncio.Future[object]] = [
            asyncio.ensure_future(self._stopping.wait()),
            asyncio.ensure_future(self._parked.wait()),  # its due time may come before others
        ]
        if budget > 0:  # with no room for new readings, only a due retry may wake us
            waits.append(asyncio.ensure_future(self.buffer.wait_for_data(self._cursor)))
        timeout = None
        if self._retry:
            timeout = max(0.0, self._retry[0].due - self._loop_time())
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _fetch(self, limit: int) -> None:
        """Move up to `limit` readings past the cursor into `self._pending`."""
        committed = self.buffer.last_seq  # read first: every chunk up to it is visible
        if limit <= 0 or committed <= self._cursor:
            return
        chunks = await self.buffer.fetch(self._cursor, limit)
        if not chunks:  # what lay between was deleted, dropped or set aside
            self._cursor = max(self._cursor, committed)
            return
        for chunk in chunks:
            fresh = [r for r in chunk.readings if r.seq > self._cursor]
            self._outstanding[chunk.first_seq] = self._outstanding.get(chunk.first_seq, 0) + len(
                fresh
            )
            self._pending.extend((chunk.first_seq, r) for r in fresh)
            self._cursor = chunk.readings[-1].seq

    def _batches(self, readings: list[tuple[int, StoredReading]]) -> Iterator[Batch]:
        """Group readings by routing key, in order, into messages within the size caps."""
        by_key: dict[str, list[tuple[int, StoredReading]]] = {}
        for item in readings:
            by_key.setdefault(self._routing_key(item[1]), []).append(item)
        limit_count = self.config.batch.max_readings
        limit_bytes = min(int(self.config.batch.max_bytes), self._max_body)
        stream = self.buffer.stream.encode()
        for key, items in by_key.items():
            parts: list[bytes] = []
            members: list[tuple[int, StoredReading]] = []
            size = len(self._head) + 2
            for first_seq, reading in items:
                part = b'{"id":"%s-%d",%s' % (stream, reading.seq, reading.body[1:])
                if members and (len(members) >= limit_count or size + len(part) + 1 > limit_bytes):
                    yield self._batch(key, parts, members)
                    parts, members, size = [], [], len(self._head) + 2
                parts.append(part)
                members.append((first_seq, reading))
                size += len(part) + 1
            if members:
                yield self._batch(key, parts, members)

    def _batch(
        self, key: str, parts: list[bytes], members: list[tuple[int, StoredReading]]
    ) -> Batch:
        chunks: dict[int, int] = {}
        for first_seq, _ in members:
            chunks[first_seq] = chunks.get(first_seq, 0) + 1
        first, last = members[0][1].seq, members[-1][1].seq
        return Batch(
            due=0.0,
            first_seq=first,
            routing_key=key,
            body=self._head + b",".join(parts) + b"]}",
            message_id=f"{self.buffer.stream}-{first}-{last}-{len(members)}",
            count=len(members),
            chunks=chunks,
        )

    def _routing_key(self, reading: StoredReading) -> str:
        cache_key = (reading.device, reading.source)
        key = self._routing_keys.get(cache_key)
        if key is None:
            key = self.config.routing_key.format(
                gateway=self.gateway.id,
                site=self.gateway.site,
                device=reading.device,
                source=reading.source,
            )
            key = key.encode()[:MAX_ROUTING_KEY].decode("utf-8", "ignore")
            if len(self._routing_keys) < 100_000:
                self._routing_keys[cache_key] = key
        return key


def _ready_now(connection: AbstractRobustConnection) -> bool:
    """Whether the connection is open and not blocked, known without a turn of the loop.

    aiormq's `ready()` waits on two events; when both are set it finishes at its first
    step. Taking that step here, rather than in a task, matters under load: a task and
    a wait per publish cost several turns of an event loop that the intake keeps busy.
    """
    underlay = connection.transport
    if underlay is None:
        return False
    step = underlay.connection.ready()
    try:
        step.send(None)
    except StopIteration:
        return True
    step.close()  # it would have waited: let `_unblocked` wait, and say why
    return False
