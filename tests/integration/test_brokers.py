"""The broker fixtures themselves: real round trips, restarts that keep data, loopback only."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import uuid
from pathlib import Path

import aio_pika
import paho.mqtt.client as mqtt
import pytest
from aio_pika.abc import AbstractIncomingMessage
from edge_gateway_sim.brokers import MosquittoBroker, RabbitMQNode
from paho.mqtt.enums import CallbackAPIVersion

TIMEOUT = 10.0


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _publish_persistent(url: str, queue_name: str, body: bytes) -> None:
    """Declare a durable queue and publish one persistent message to it, confirmed."""
    connection = await aio_pika.connect(url, timeout=TIMEOUT)
    async with connection:
        channel = await connection.channel()  # publisher confirms are on by default
        await channel.declare_queue(queue_name, durable=True)
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await asyncio.wait_for(
            channel.default_exchange.publish(message, routing_key=queue_name), TIMEOUT
        )


async def _get_one(url: str, queue_name: str, delete: bool = True) -> AbstractIncomingMessage:
    connection = await aio_pika.connect(url, timeout=TIMEOUT)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True, passive=True)
        message = await queue.get(timeout=TIMEOUT, fail=True)
        assert message is not None
        await message.ack()
        if delete:
            await queue.delete(if_unused=False, if_empty=False)
        return message


async def test_rabbitmq_persistent_round_trip(rabbitmq: RabbitMQNode) -> None:
    exchange_name, queue_name = _unique("ex"), _unique("q")
    connection = await aio_pika.connect(rabbitmq.url, timeout=TIMEOUT)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True, auto_delete=True
        )
        queue = await channel.declare_queue(queue_name, durable=True, auto_delete=True)
        await queue.bind(exchange, routing_key="readings.#")

        message = aio_pika.Message(
            b'{"t": 21.5}',
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id="m-1",
        )
        await asyncio.wait_for(exchange.publish(message, routing_key="readings.kitchen"), TIMEOUT)

        received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await queue.consume(received.put)
        got = await asyncio.wait_for(received.get(), TIMEOUT)
        await got.ack()

    assert got.body == b'{"t": 21.5}'
    assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert got.message_id == "m-1"
    assert got.routing_key == "readings.kitchen"


@pytest.mark.parametrize("how", ["restart", "kill"])
async def test_confirmed_persistent_message_survives(rabbitmq_node: RabbitMQNode, how: str) -> None:
    """A confirmed persistent message in a durable queue outlives a graceful restart and a
    SIGKILL of the broker; the node comes back on the same port."""
    queue_name = _unique("durable")
    port = rabbitmq_node.port
    if how == "kill":
        # RabbitMQ 3.10 keeps new queue definitions (mnesia) in memory for a while: a SIGKILL
        # right after the declaration can lose the queue itself. Settle it with a clean restart.
        await _publish_persistent(rabbitmq_node.url, queue_name, b"settle")
        await asyncio.to_thread(rabbitmq_node.restart)
        settled = await _get_one(rabbitmq_node.url, queue_name, delete=False)
        assert settled.body == b"settle"
    await _publish_persistent(rabbitmq_node.url, queue_name, b"keep me")
    listing = await asyncio.to_thread(rabbitmq_node.ctl, "list_queues", "name", "messages")
    assert f"{queue_name}\t1" in listing

    if how == "restart":
        await asyncio.to_thread(rabbitmq_node.restart)
    else:
        await asyncio.to_thread(rabbitmq_node.kill)
        assert not rabbitmq_node.is_running
        with pytest.raises(ConnectionRefusedError):  # the broker is really gone
            socket.create_connection((rabbitmq_node.host, port), timeout=2).close()
        await asyncio.to_thread(rabbitmq_node.start)

    assert rabbitmq_node.port == port
    message = await _get_one(rabbitmq_node.url, queue_name)
    assert message.body == b"keep me"


def test_mqtt_qos1_round_trip(mosquitto: MosquittoBroker) -> None:
    topic = f"test/{_unique('roundtrip')}"
    subscribed, received = threading.Event(), threading.Event()
    messages: list[mqtt.MQTTMessage] = []

    def on_subscribe(*_: object) -> None:
        subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        messages.append(message)
        received.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=_unique("sub"))
    sub.on_subscribe = on_subscribe
    sub.on_message = on_message
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=_unique("pub"))
    sub.connect(mosquitto.host, mosquitto.port)
    pub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    pub.loop_start()
    try:
        sub.subscribe(topic, qos=1)
        assert subscribed.wait(TIMEOUT)
        info = pub.publish(topic, b"23.4", qos=1)
        info.wait_for_publish(TIMEOUT)  # PUBACK from the broker
        assert info.is_published()
        assert received.wait(TIMEOUT)
    finally:
        _stop(pub)
        _stop(sub)

    assert [(m.topic, m.payload, m.qos) for m in messages] == [(topic, b"23.4", 1)]


def _connect_session(
    broker: MosquittoBroker, client_id: str
) -> tuple[mqtt.Client, list[bytes], threading.Event]:
    """A persistent-session (clean_session=False) client, connected and looping."""
    payloads: list[bytes] = []
    connected, received = threading.Event(), threading.Event()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        payloads.append(bytes(message.payload))
        received.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_connect = lambda *_: connected.set()
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert connected.wait(TIMEOUT)
    return client, payloads, received


def _stop(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def test_mosquitto_restart_keeps_port_and_sessions(mosquitto_broker: MosquittoBroker) -> None:
    """After a graceful restart the broker is back on the same port, and the message queued
    for a disconnected persistent session was saved to disk and is delivered."""
    topic, client_id = f"test/{_unique('restart')}", _unique("session")
    client, _, _ = _connect_session(mosquitto_broker, client_id)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(TIMEOUT)
    _stop(client)

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=_unique("pub"))
    pub.connect(mosquitto_broker.host, mosquitto_broker.port)
    pub.loop_start()
    pub.publish(topic, b"queued while offline", qos=1).wait_for_publish(TIMEOUT)
    _stop(pub)

    port = mosquitto_broker.port
    mosquitto_broker.restart()
    assert mosquitto_broker.port == port

    client, payloads, received = _connect_session(mosquitto_broker, client_id)
    try:
        assert received.wait(TIMEOUT)
    finally:
        _stop(client)
    assert payloads == [b"queued while offline"]


def _listeners() -> list[tuple[str, int, str]]:
    """(host, port, socket inode) of every listening TCP socket on this machine (Linux /proc)."""
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A":  # LISTEN
                continue
            address, port = local.split(":")
            raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
            host = ipaddress.ip_address(
                b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            )
            found.append((str(host), int(port, 16), inode))
    return found


def _socket_inodes(pid: int) -> set[str]:
    links = (fd.readlink().name for fd in Path(f"/proc/{pid}/fd").iterdir())
    return {name[len("socket:[") : -1] for name in links if name.startswith("socket:[")}


def test_brokers_listen_on_loopback_only(
    rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker
) -> None:
    beam, broker = rabbitmq.pid, mosquitto.pid
    assert beam is not None and broker is not None
    listeners = _listeners()

    def of_pid(pid: int) -> set[tuple[str, int]]:
        inodes = _socket_inodes(pid)
        return {(host, port) for host, port, inode in listeners if inode in inodes}

    assert of_pid(beam) == {("127.0.0.1", rabbitmq.port), ("127.0.0.1", rabbitmq.dist_port)}
    assert of_pid(broker) == {("127.0.0.1", mosquitto.port)}
    epmd_hosts = {host for host, port, _ in listeners if port == rabbitmq.epmd_port}
    assert epmd_hosts and all(ipaddress.ip_address(h).is_loopback for h in epmd_hosts)
