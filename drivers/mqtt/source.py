"""The MQTT source: a persistent QoS 1 session whose PUBACKs wait for the disk.

paho-mqtt runs its network loop in its own thread (it reconnects by itself with
backoff); received messages are handed to the event loop in batches. A batch is
decoded, put into the buffer in one call, and only when that call returns (the
readings are on disk) are its messages acknowledged (paho-mqtt 2.x manual acks).
A crash before that leaves them unacknowledged, so the broker sends them again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from drivers.base import DriverStats, Sink
from drivers.mqtt.config import MqttDriverConfig, Subscription
from drivers.mqtt.decode import decode
from drivers.mqtt.topics import DeviceTemplate, topic_matches
from gateway.backoff import Backoff
from gateway.config_types import read_secret
from gateway.errors import BufferFull, DecodeError, StorageError
from gateway.logs import RateLimitedLog
from gateway.model import Reading
from gateway.tls import client_ssl_context

log = structlog.get_logger("drivers.mqtt")

_MAX_TOPIC_CACHE = 10_000
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


class _Inbox:
    """Messages from paho's thread to the event loop, one wake-up per batch, not per message."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self._limit = limit
        self._items: list[_Message] = []
        self._lock = threading.Lock()
        self._event = asyncio.Event()
        self._signalled = False
        self.overflowed = 0

    def push(self, item: _Message) -> None:
        with self._lock:
            if item.qos == 0 and len(self._items) >= self._limit:
                self.overflowed += 1  # QoS 0 has no flow control; QoS 1 is bounded by the broker
                return
            self._items.append(item)
            if self._signalled:
                return
            self._signalled = True
        self._loop.call_soon_threadsafe(self._event.set)

    async def take(self) -> list[_Message]:
        await self._event.wait()
        with self._lock:
            items, self._items = self._items, []
            self._signalled = False
            self._event.clear()
        return items


class MqttSource:
    """A `type: mqtt` driver instance."""

    def __init__(self, config: MqttDriverConfig, gateway_id: str, sink: Sink) -> None:
        self.name = config.name
        self.config = config
        self.stats = DriverStats(type="mqtt")
        self._sink = sink
        self._client_id = config.client_id or f"edge-gateway-{gateway_id}-{config.name}"
        self._templates = [DeviceTemplate(sub.device) for sub in config.subscriptions]
        self._topic_cache: dict[str, int | None] = {}
        self._session = 0
        self._session_lock = threading.Lock()
        self._bad_input = RateLimitedLog(log)
        self._log = log.bind(driver=self.name)

    async def run(self) -> None:
        inbox = _Inbox(asyncio.get_running_loop(), limit=max(10_000, self.config.receive_maximum))
        client = self._client(inbox)
        client.loop_start()
        try:
            while True:
                await self._handle(client, await inbox.take())
                if inbox.overflowed:
                    self.stats.counters["qos0_overflow"] = inbox.overflowed
        finally:
            self.stats.state = "stopped"
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    # --- paho side (its network thread) --------------------------------------------

    def _client(self, inbox: _Inbox) -> mqtt.Client:
        v5 = self.config.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        client.reconnect_delay_set(
            int(max(1, self.config.reconnect_min_s)), int(self.config.reconnect_max_s)
        )
        if self.config.username is not None:
            password = read_secret(self.config.password_file) if self.config.password_file else None
            client.username_pw_set(self.config.username, password)
        if self.config.tls is not None:
            client.tls_set_context(client_ssl_context(self.config.tls))
        client.suppress_exceptions = True  # a callback bug must not end paho's network thread
        client.enable_logger(logging.getLogger("paho.mqtt"))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe

        def on_message(_client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
            try:
                topic = message.topic
            except UnicodeDecodeError:  # MQTT requires UTF-8 topics; count it, then ack it
                topic = _INVALID_TOPIC
            inbox.push(
                _Message(
                    topic,
                    bytes(message.payload),
                    message.qos,
                    message.mid,
                    time.time(),
                    self._session,
                )
            )

        client.on_message = on_message
        port = self.config.port or (8883 if self.config.tls else 1883)
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.config.session_expiry_s
            properties.ReceiveMaximum = self.config.receive_maximum
        client.connect_async(
            self.config.host,
            port,
            keepalive=self.config.keepalive_s,
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        return client

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self.stats.state = "refused"
            self.stats.failed(f"broker refused the connection: {reason}")
            self._bad_input.error(
                "refused",
                "MQTT broker refused the connection",
                driver=self.name,
                host=self.config.host,
                reason=str(reason),
                hint="check username, password_file, client_id and the broker's ACLs",
            )
            return
        with self._session_lock:
            if not flags.session_present:
                self._session += 1  # ids of unacknowledged messages belong to the old session
        self.stats.state = "connected"
        self._log.info(
            "connected to MQTT broker",
            host=self.config.host,
            session_present=flags.session_present,
            client_id=self._client_id,
        )
        if self.config.protocol == "5":
            client.subscribe([(s.topic, SubscribeOptions(qos=s.qos)) for s in self._subs])
        else:
            client.subscribe([(s.topic, int(s.qos)) for s in self._subs])

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self.stats.state = "unreachable"
        self.stats.failed(f"cannot connect to {self.config.host}")
        self._bad_input.warning(
            "connect-fail",
            "MQTT broker unreachable; retrying with backoff",
            driver=self.name,
            host=self.config.host,
            port=self.config.port or (8883 if self.config.tls else 1883),
            hint="check that the broker runs and host/port are right",
        )

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if self.stats.state in ("stopped", "refused"):
            return  # refused: the reason was logged, a disconnect is no news
        self.stats.state = "disconnected"
        self._bad_input.warning(
            "disconnect",
            "MQTT connection lost; reconnecting with backoff",
            driver=self.name,
            host=self.config.host,
            reason=str(reason),
        )

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any
    ) -> None:
        for sub, reason in zip(self._subs, reasons, strict=False):
            if reason.is_failure:
                self.stats.failed(f"subscription to {sub.topic} refused: {reason}")
                self._log.error(
                    "MQTT broker refused a subscription",
                    topic=sub.topic,
                    reason=str(reason),
                    hint="check the broker's ACL for this client",
                )

    @property
    def _subs(self) -> list[Subscription]:
        return self.config.subscriptions

    # --- event loop side ---------------------------------------------------------------

    async def _handle(self, client: mqtt.Client, messages: list[_Message]) -> None:
        if not messages:
            return
        readings: list[Reading] = []
        for message in messages:
            readings.extend(self._decode(message))
        await self._accept(readings)
        self.stats.read(len(readings))
        with self._session_lock:
            for message in messages:
                if message.qos and message.session == self._session:
                    client.ack(message.mid, message.qos)

    def _decode(self, message: _Message) -> list[Reading]:
        """Readings of one message; bad input is counted and logged, never raised."""
        if len(message.payload) > self.config.max_payload_bytes:
            self.stats.oversized += 1
            self._bad_input.warning(
                f"oversized:{message.topic}",
                "MQTT payload too large; skipped",
                driver=self.name,
                topic=message.topic,
                size=len(message.payload),
                max_payload_bytes=self.config.max_payload_bytes,
            )
            return []
        index = None if message.topic == _INVALID_TOPIC else self._subscription_for(message.topic)
        if index is None:
            self.stats.malformed += 1
            self._bad_input.warning(
                "no-subscription",
                "MQTT message on a topic no subscription matches (or not UTF-8); skipped",
                driver=self.name,
                topic=message.topic,
            )
            return []
        sub = self.config.subscriptions[index]
        try:
            device = self._templates[index].device(message.topic)
            return decode(sub, device, message.payload, message.received, self.name)
        except DecodeError as exc:
            self.stats.malformed += 1
            self._bad_input.warning(
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

    async def _accept(self, readings: Sequence[Reading]) -> None:
        """Put into the buffer, retrying until it takes them; meanwhile nothing is acked."""
        backoff = Backoff(0.2, 10.0)
        while True:
            try:
                await self._sink.put(readings)
                return
            except (BufferFull, StorageError) as exc:
                self.stats.failed(str(exc))
                delay = backoff.next_delay()
                self._bad_input.warning(
                    "not-accepted",
                    "buffer did not accept readings; holding them unacknowledged",
                    driver=self.name,
                    error=str(exc),
                    readings=len(readings),
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
