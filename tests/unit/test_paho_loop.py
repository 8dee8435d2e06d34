"""How `LoopClient` reads a PUBLISH: MQTT's variable byte integer (the spec's table, section
1.5.5) and the fields of the packet's body, whole or cut short."""

from __future__ import annotations

import asyncio
import os
import socket

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.exception import MalformedPacket

from drivers.mqtt.paho_loop import LoopBinding, LoopClient, _remaining_length


@pytest.mark.parametrize(
    ("encoded", "value"),
    [
        (b"\x00", 0),
        (b"\x7f", 127),
        (b"\x80\x01", 128),
        (b"\xff\x7f", 16_383),
        (b"\x80\x80\x01", 16_384),
        (b"\xff\xff\x7f", 2_097_151),
        (b"\x80\x80\x80\x01", 2_097_152),
        (b"\xff\xff\xff\x7f", 268_435_455),
    ],
)
def test_variable_byte_integers_of_the_spec(encoded: bytes, value: int) -> None:
    data = b"\x30" + encoded + b"rest"
    assert _remaining_length(data, 1) == (value, 1 + len(encoded))


def test_a_cut_integer_is_not_there_yet() -> None:
    assert _remaining_length(b"\x30\x80\x80", 1) is None
    assert _remaining_length(b"\x30\x80\x01", 1, stop=2) is None  # `stop` ends it first


def test_a_fifth_byte_is_malformed() -> None:
    with pytest.raises(MalformedPacket):
        _remaining_length(b"\x30\x80\x80\x80\x80\x01", 1)


def _client(protocol: int) -> tuple[LoopClient, list[tuple[bytes, bytes, int, int]]]:
    client = LoopClient(CallbackAPIVersion.VERSION2, protocol=protocol)
    got: list[tuple[bytes, bytes, int, int]] = []
    client.on_arrival = lambda *message: got.append(message)
    return client, got


def _publish_body(topic: bytes, payload: bytes, mid: int | None, properties: bytes | None) -> bytes:
    body = len(topic).to_bytes(2) + topic
    if mid is not None:
        body += mid.to_bytes(2)
    if properties is not None:
        body += bytes([len(properties)]) + properties
    return body + payload


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_a_publish_body_is_split_into_its_fields(protocol: int) -> None:
    client, got = _client(protocol)
    properties = b"\x03\x00\x10application/json" if protocol == mqtt.MQTTv5 else None
    body = _publish_body(b"a/b", b'{"n":1}', 7, properties)
    client._deliver(0x32, b"xx" + body + b"next", 2, 2 + len(body))  # QoS 1, inside a chunk
    assert got == [(b"a/b", b'{"n":1}', 1, 7)]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\x00\x09a/b", "topic longer than the packet"),
        (b"\x00\x03a/b\x00", "packet id cut short"),
        (b"\x00\x03a/b\x00\x07", "no properties length"),
        (b"\x00\x03a/b\x00\x07\x05ab", "properties longer than the packet"),
    ],
)
def test_a_short_publish_is_malformed(body: bytes, why: str) -> None:
    client, got = _client(mqtt.MQTTv5)
    with pytest.raises(MalformedPacket):
        client._deliver(0x32, body + b"bytes of the next packet", 0, len(body))
    assert got == [], why


async def test_a_socket_paho_closes_in_its_connect_thread_leaves_nothing_registered() -> None:
    """paho's (re)connect closes the old socket in the executor thread, right after telling
    the binding, before the loop comes to the removal: the socket had no number any more,
    the removal failed ('Invalid file descriptor: -1' from asyncio, seen by a review) and
    left its registration behind. The next socket given that number must still be read."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    client = LoopClient(CallbackAPIVersion.VERSION2)
    binding = LoopBinding(client, loop)
    old, _old_peer = socket.socketpair()
    binding._opened(old)  # connected: read by the loop
    number = old.fileno()

    def reconnect_closes_it() -> None:
        binding._on_close(client, None, old)
        old.close()

    await asyncio.to_thread(reconnect_closes_it)
    new, new_peer = socket.socketpair()
    if new.fileno() != number:  # the number went elsewhere: take it for the new socket
        os.dup2(new.fileno(), number)
        new.close()
        new = socket.socket(fileno=number)
    readable = asyncio.Event()
    loop.add_reader(new, readable.set)
    new_peer.send(b"x")
    try:
        await asyncio.wait_for(readable.wait(), 2)
    finally:
        loop.remove_reader(new)
        for sock in (new, new_peer, _old_peer):
            sock.close()
    assert errors == []
