"""The MQTT source: a persistent QoS 1 session whose PUBACKs wait for the disk.

paho-mqtt is driven by the asyncio event loop (`paho_loop`), so messages, decoding
and acks share one thread with no hand-offs. Only the blocking connect runs in an
executor.

Messages that arrived together are decoded and put into the buffer in one call;
they are acknowledged (paho-mqtt 2.x manual acks) only once that call returns,
when the readings are on disk. Puts are pipelined (the next batch is put while
the previous one waits for its commit) and acknowledged strictly in order. A
crash before the ack leaves messages unacknowledged: the broker sends them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from drivers.base import DriverStats, Sink, put_until_accepted
from drivers.mqtt.config import CONNECT_TIMEOUT_S, MqttDriverConfig
from drivers.mqtt.decode import decode
from drivers.mqtt.paho_loop import LoopBinding, LoopClient
from drivers.mqtt.topics import DeviceTemplate, topic_matches
from gateway.backoff import Backoff
from gateway.config_types import read_secret
from gateway.errors import (
    AcceptedThenCancelled,
    BufferFull,
    DecodeError,
    GatewayError,
    StorageError,
)
from gateway.logs import RateLimitedLog
from gateway.model import Encoded, Reading

log = structlog.get_logger("drivers.mqtt")

_MAX_TOPIC_CACHE = 10_000
_MESSAGES_IN_FLIGHT = 1_000
"""Messages whose put has not finished, at most; intake waits beyond (back-pressure while the
buffer is slow or refuses). Counted in messages, not puts: at 1,000/s intake makes several
small puts per commit interval, and a bound of 4 puts delayed some readings by a commit.
It bounds a commit too: 1,000 still allows ~20,000 readings/s at a 50 ms commit cycle, and
peak memory under overload was 4 MB lower than with 2,000 (500 held back throughput)."""
_INTAKE_PER_TURN = 250
"""Messages decoded and put per turn of the event loop: publishing must get its turns too."""
_PAUSE_READING_AT = 1_000
"""Messages waiting for intake at which the socket is left alone: the rest waits in the
socket and with the broker (QoS 1), or is dropped there (QoS 0), instead of in our memory.
One commit cycle's worth at 12,000/s; with 2,000 peak RSS under overload was 1 MB higher."""
_RESUME_READING_BELOW = 500
_DISCONNECT_WITHIN_S = 1.0
"""How long a stop waits for the broker to read its last acks and DISCONNECT and close."""
_SHORT_CONNECTION_S = 10.0
_SHORT_CONNECTIONS = 3
"""Connections in a row that end this soon, the broker up all the while: another client is
taking our session."""


@dataclass(frozen=True, slots=True)
class _Batch:
    """Messages that arrived together: the put that makes their readings durable, and what
    acknowledging them takes.

    Held until the put returns (a commit cycle or more, a thousand messages' worth under
    overload), so it keeps the readings encoded and the packet ids, not the messages and
    `Reading` objects: 1 MB less at the peak (docs/performance.md).
    """

    put: asyncio.Task[GatewayError | None]
    readings: Encoded
    messages: int
    session: int
    mids: list[int]
    """Of its QoS 1 messages received on `session`: only that connection can acknowledge."""


_INVALID_TOPIC = "\x00invalid-utf8-topic"


@dataclass(frozen=True, slots=True)
class _Message:
    """What we keep of a paho message: enough to decode it and to acknowledge it."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    received: float
    session: int


class MqttSource:
    """A `type: mqtt` driver instance."""

    outbox = None
    """Nothing to hand on when stopped: the broker redelivers what was not acknowledged."""

    def __init__(self, config: MqttDriverConfig, gateway_id: str, sink: Sink) -> None:
        self.name = config.name
        self.config = config
        self.stats = DriverStats(type="mqtt")
        self._sink = sink
        self._client_id = config.client_id or f"edge-gateway-{gateway_id}-{config.name}"
        self._templates = [DeviceTemplate(sub.device) for sub in config.subscriptions]
        self._filters = config.broker_filters()
        if config.protocol == "5":  # MQTT 3.1.1 brokers (Mosquitto) send one copy
            for a, b in config.partial_overlaps():
                log.warning(
                    "MQTT subscriptions share topics: a message on such a topic becomes two "
                    "readings",
                    driver=config.name,
                    filters=[a, b],
                    hint="make the filters disjoint, or let one cover the other (the first "
                    "subscription that matches decodes)",
                )
        self._topic_cache: dict[str, int | None] = {}
        self._session = 0
        self._inbox: list[_Message] = []
        self._arrived = asyncio.Event()
        self._in_order: asyncio.Queue[_Batch] = asyncio.Queue()
        self._settling: _Batch | None = None
        """The batch `_acknowledge` took from `_in_order` and has not acknowledged yet."""
        self._unsettled = 0
        """Messages in `_in_order`: bounded by `_MESSAGES_IN_FLIGHT`."""
        self._room = asyncio.Event()
        self._lost: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        """Set when the connection ends, to when it was made (`time.monotonic()`)."""
        self._connected_since = 0.0
        self._short_connections = 0
        self._received = 0
        """Messages received on the current connection: one that delivered was a success."""
        self._connect_args: dict[str, Any] = {}
        self._rate_limited = RateLimitedLog(log)
        self._log = log.bind(driver=self.name)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._inbox = []  # a restart begins afresh: unacknowledged messages come again
        self._in_order = asyncio.Queue()
        self._settling = None
        self._unsettled = 0
        self._room.set()
        client = self._client()
        self._binding = LoopBinding(client, loop)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._keep_connected(client, loop))
                tasks.create_task(self._keep_alive(client))
                tasks.create_task(self._acknowledge(client))
                await self._intake(tasks)
        finally:
            self.stats.state = "stopped"
            if client.is_connected():
                self._ack_the_accepted(client)
                await self._binding.disconnect(_DISCONNECT_WITHIN_S)  # the session stays
            self._binding.detach()
            sock = client.socket()
            if sock is not None:
                sock.close()

    async def _keep_connected(self, client: LoopClient, loop: asyncio.AbstractEventLoop) -> None:
        """Connect, wait for the connection to drop, reconnect with backoff; for ever."""
        backoff = Backoff(self.config.reconnect_min_s, self.config.reconnect_max_s)
        port = self.config.broker_port
        first = True
        while True:
            self._lost = loop.create_future()
            self._received = 0
            connected_at = time.monotonic()  # a connect that fails is a run of no length
            try:
                connect = partial(client.connect, self.config.host, port, **self._connect_args)
                connecting = loop.run_in_executor(None, connect if first else client.reconnect)
                try:
                    await asyncio.shield(connecting)
                except asyncio.CancelledError:
                    # The thread cannot be stopped; let it finish (connect_timeout bounds it)
                    # so that `run()` closes this connection rather than leave it behind.
                    with contextlib.suppress(Exception):
                        await connecting
                    raise
                first = False
                connected_at = await self._lost
                if self._received:  # it delivered: reconnect soon, the broker queues for us
                    backoff.reset()
            except (OSError, ValueError) as exc:  # refused, unreachable, TLS handshake failed
                self._short_connections = 0  # the broker is away: restarting, not taken over
                self.stats.state = "unreachable"
                self.stats.failed(f"cannot connect to {self.config.host}:{port}: {exc}")
                self._rate_limited.warning(
                    "connect-fail",
                    "MQTT broker unreachable; retrying with backoff",
                    driver=self.name,
                    host=self.config.host,
                    port=port,
                    error=str(exc),
                    hint="check that the broker runs and host/port/tls are right",
                )
            # A connection that lasted (HEALTHY_RUN_S) starts the backoff afresh.
            await asyncio.sleep(backoff.delay_after(connected_at))

    async def _keep_alive(self, client: mqtt.Client) -> None:
        """paho's periodic work: keepalive pings, and noticing a silent, dead connection."""
        while True:
            await asyncio.sleep(1.0)
            client.loop_misc()

    async def _intake(self, tasks: asyncio.TaskGroup) -> None:
        """Decode what arrived and start putting it; `_acknowledge` finishes each batch in order."""
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            messages = self._inbox[:_INTAKE_PER_TURN]
            del self._inbox[:_INTAKE_PER_TURN]
            if self._inbox:
                self._arrived.set()  # the rest on the next turn
            if len(self._inbox) < _RESUME_READING_BELOW:
                self._binding.resume_reading()
            if not messages:
                continue
            self._start_put(tasks, messages)
            del messages  # not held while waiting for room
            if self._unsettled >= _MESSAGES_IN_FLIGHT:
                self._room.clear()
                await self._room.wait()  # back-pressure: `_acknowledge` makes room
            await asyncio.sleep(0)  # a slice per turn: reading, acks and publishing get theirs

    def _start_put(self, tasks: asyncio.TaskGroup, messages: list[_Message]) -> None:
        readings = Encoded.of(reading for message in messages for reading in self._decode(message))
        put = tasks.create_task(self._put(readings))
        session = self._session
        mids = [m.mid for m in messages if m.qos and m.session == session]
        self._in_order.put_nowait(_Batch(put, readings, len(messages), session, mids))
        self._unsettled += len(messages)

    async def _put(self, readings: Encoded) -> GatewayError | None:
        """Put into the buffer; a refusal is returned, for `_acknowledge` to retry in order.

        A put that the buffer committed as a stop or reload cancelled it returns None as
        well: the stop acknowledges it (`_ack_the_accepted`). This task only puts, so it
        ends here; nothing waits on after the cancel it absorbs (`_acknowledge` awaits it
        shielded, so that its own cancel is not absorbed with it).
        """
        try:
            await self._sink.put(readings)
        except (BufferFull, StorageError) as exc:
            return exc
        except AcceptedThenCancelled:
            return None
        return None

    async def _acknowledge(self, client: LoopClient) -> None:
        while True:
            batch = self._settling = await self._in_order.get()
            # Shielded: this task's cancel must end it, not pass into `_put`, which absorbs one.
            if await asyncio.shield(batch.put) is not None:
                try:
                    await self._accept(batch.readings)
                except AcceptedThenCancelled:  # a stop, as the retry's commit took them
                    self._ack(client, batch)
                    raise
            self._ack(client, batch)
            self._settling = None
            self._unsettled -= batch.messages
            if self._unsettled < _MESSAGES_IN_FLIGHT:
                self._room.set()

    def _ack(self, client: LoopClient, batch: _Batch) -> None:
        self.stats.read(len(batch.readings))
        if batch.session == self._session:
            client.ack_all(batch.mids)

    def _ack_the_accepted(self, client: LoopClient) -> None:
        """At a stop: acknowledge what the buffer has taken but was not acknowledged yet, or
        the resumed session would bring it again, as readings with new ids."""
        batches = [self._settling] if self._settling is not None else []
        while not self._in_order.empty():
            batches.append(self._in_order.get_nowait())
        for batch in batches:
            put = batch.put  # on disk: it returned None (an error, a refusal: it did not)
            if put.done() and not put.cancelled() and not put.exception() and not put.result():
                self._ack(client, batch)

    def _client(self) -> LoopClient:
        v5 = self.config.protocol == "5"
        client = LoopClient(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        client.connect_timeout = CONNECT_TIMEOUT_S
        if self.config.username is not None:
            password = read_secret(self.config.password_file) if self.config.password_file else None
            client.username_pw_set(self.config.username, password)
        if self.config.tls is not None:
            client.tls_set_context(self.config.tls.client_context())
        client.suppress_exceptions = True  # a callback bug must not end paho's network thread
        client.enable_logger(logging.getLogger("paho.mqtt"))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe

        client.on_arrival = self._on_arrival
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.config.session_expiry_s
            properties.ReceiveMaximum = self.config.receive_maximum
            properties.MaximumPacketSize = self.config.max_packet_bytes
        self._connect_args = {
            "keepalive": self.config.keepalive_s,
            "clean_start": False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            "properties": properties,
        }
        return client

    def _on_arrival(self, raw_topic: bytes, payload: bytes, qos: int, mid: int) -> None:
        try:
            topic = raw_topic.decode()
        except UnicodeDecodeError:  # MQTT requires UTF-8 topics; count it, then ack it
            topic = _INVALID_TOPIC
        self._inbox.append(_Message(topic, payload, qos, mid, time.time(), self._session))
        self._received += 1
        self._arrived.set()
        if len(self._inbox) >= _PAUSE_READING_AT:
            self._binding.pause_reading()

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self.stats.state = "refused"
            self.stats.failed(f"broker refused the connection: {reason}")
            self._rate_limited.error(
                "refused",
                "MQTT broker refused the connection",
                driver=self.name,
                host=self.config.host,
                port=self.config.broker_port,
                client_id=self._client_id,
                username=self.config.username,
                reason=str(reason),
                hint="check username, password_file, client_id and the broker's ACLs",
            )
            return
        # Packet ids of unacknowledged messages belong to the old connection: never ack them
        # on this one (a resumed session sends those messages again, and we ack them then).
        self._session += 1
        self.stats.state = "connected"
        self._connected_since = time.monotonic()
        self._log.info(
            "connected to MQTT broker",
            host=self.config.host,
            session_present=flags.session_present,
            client_id=self._client_id,
        )
        if self.config.protocol == "5":
            # retainHandling=1: retained messages only on a new subscription, not on every
            # reconnect of the persistent session (they would come back as new readings).
            client.subscribe(
                [
                    (topic, SubscribeOptions(qos=qos, retainHandling=1))
                    for topic, qos in self._filters
                ]
            )
        else:
            client.subscribe(self._filters)
        if flags.session_present:  # it may hold filters subscribed by an older configuration
            subscribed = {topic for topic, _ in self._filters}
            covered = [s.topic for s in self.config.subscriptions if s.topic not in subscribed]
            if covered:  # each would make its messages come twice (MQTT 5)
                client.unsubscribe(covered)

    def _on_disconnect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        connected_at, self._connected_since = self._connected_since or time.monotonic(), 0.0
        # Now, not only at the next CONNACK: the reconnect gives paho a new socket before it,
        # and acks of this connection's messages must not go out on that one.
        self._session += 1
        if not self._lost.done():
            self._lost.set_result(connected_at)
        if self.stats.state in ("stopped", "refused"):
            return  # refused: the reason was logged, a disconnect is no news
        self.stats.state = "disconnected"
        why = _why_lost(client, reason)
        self._rate_limited.warning(
            "disconnect",
            "MQTT connection lost; reconnecting with backoff",
            driver=self.name,
            host=self.config.host,
            reason=why,
        )
        taken = str(reason) == "Session taken over"  # MQTT 5 says so; 3.1.1 brokers just close
        short = time.monotonic() - connected_at < _SHORT_CONNECTION_S
        going = str(reason) == "Server shutting down"
        self._short_connections = self._short_connections + 1 if short and not going else 0
        if taken or self._short_connections >= _SHORT_CONNECTIONS:
            self._name_the_other_client(taken, why)

    def _name_the_other_client(self, taken: bool, why: str) -> None:
        """Connections that keep ending soon after they start, while the broker stays up
        (a failed connect in between resets the count): most likely a second gateway with
        this client id, each connect ending the other's connection."""
        if taken:
            suspect = f"another client took over the session of client id {self._client_id}"
        else:
            suspect = (
                f"{self._short_connections} connections in a row ended within "
                f"{_SHORT_CONNECTION_S:g} s: another client with client id {self._client_id}, "
                "or a broker restarting?"
            )
        self.stats.failed(suspect)
        self._rate_limited.error(
            "taken-over",
            "MQTT connections end within seconds: another client may use this client id",
            driver=self.name,
            client_id=self._client_id,
            connections=self._short_connections,
            reason=why,
            hint="a second gateway with a copy of this configuration (or of this SD card)? "
            "give each gateway its own gateway.id, or each driver its own client_id"
            + ("" if taken else " (if the broker was being restarted, nothing is wrong)"),
        )

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any
    ) -> None:
        refused = False
        for (topic, _), reason in zip(self._filters, reasons, strict=False):
            if reason.is_failure:
                refused = True
                self.stats.failed(f"subscription to {topic} refused: {reason}")
                self._log.error(
                    "MQTT broker refused a subscription",
                    topic=topic,
                    reason=str(reason),
                    hint="check the broker's ACL for this client",
                )
        if not refused:
            self._log.info("MQTT subscriptions active", topics=[t for t, _ in self._filters])

    # --- event loop side ---------------------------------------------------------------

    def _decode(self, message: _Message) -> list[Reading]:
        """Readings of one message; bad input is counted and logged, never raised."""
        if len(message.payload) > self.config.max_payload_bytes:
            self.stats.oversized += 1
            self._rate_limited.warning(
                f"oversized:{message.topic}",
                "MQTT payload too large; skipped",
                driver=self.name,
                topic=message.topic,
                size=len(message.payload),
                max_payload_bytes=self.config.max_payload_bytes,
                hint="raise max_payload_bytes if payloads this large are expected",
            )
            return []
        index = None if message.topic == _INVALID_TOPIC else self._subscription_for(message.topic)
        if index is None:
            self.stats.malformed += 1
            self._rate_limited.warning(
                "no-subscription",
                "MQTT message on a topic no subscription matches (or not UTF-8); skipped",
                driver=self.name,
                topic=message.topic,
                hint="a subscription of an earlier configuration lives on in this client's "
                "persistent session at the broker: set a new client_id to start a fresh one; "
                "a topic that is not UTF-8 must be fixed at the publisher",
            )
            return []
        sub = self.config.subscriptions[index]
        try:
            device = self._templates[index].device(message.topic)
            return decode(sub, device, message.payload, message.received, self.name)
        except Exception as exc:  # a decoder bug must not stall intake: count it, ack it
            if not isinstance(exc, DecodeError):
                self._log.exception("decoder failed on a payload; skipped", topic=message.topic)
                exc = DecodeError(f"decoder failed: {type(exc).__name__}: {exc}", message.payload)
            self.stats.malformed += 1
            self._rate_limited.warning(
                f"malformed:{message.topic}",
                "malformed MQTT payload; skipped",
                driver=self.name,
                topic=message.topic,
                error=str(exc),
                sample_hex=exc.sample.hex(),
            )
            return []

    def _subscription_for(self, topic: str) -> int | None:
        if topic in self._topic_cache:
            return self._topic_cache[topic]
        index = next(
            (i for i, s in enumerate(self.config.subscriptions) if topic_matches(s.topic, topic)),
            None,
        )
        if len(self._topic_cache) >= _MAX_TOPIC_CACHE:
            self._topic_cache.clear()
        self._topic_cache[topic] = index
        return index

    async def _accept(self, readings: Encoded) -> None:
        """Put into the buffer, retrying until it takes them; meanwhile nothing is acked."""
        await put_until_accepted(
            self._sink,
            readings,
            self.name,
            self.stats,
            self._rate_limited,
            "holding them unacknowledged",
        )


def _why_lost(client: mqtt.Client, reason: Any) -> str:
    """The broker's reason for ending a connection, or what its socket said when there was
    none (paho's "Unspecified error"): closed by the broker, reset, timed out."""
    socket_error = client.socket_error if isinstance(client, LoopClient) else None
    if str(reason) == "Unspecified error" and socket_error:
        return socket_error
    return str(reason)
