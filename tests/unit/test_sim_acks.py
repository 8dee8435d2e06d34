"""How the simulator's fleet reads a PUBACK itself (`_AckingClient`): the same outcome as
paho's own reader, for whole, refused, foreign and cut-short acks."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
import pytest
from edge_gateway_sim.mqtt_sensors import _AckingClient
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.exception import MalformedPacket

_PUBACK = 0x40


def _client_with_one_unacked() -> tuple[_AckingClient, mqtt.MQTTMessageInfo, list[Any]]:
    """A client holding one QoS 1 message (published while offline: paho keeps it to send)."""
    client = _AckingClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    acked: list[Any] = []
    client.on_publish = lambda _c, _u, mid, reason, _p: acked.append((mid, reason))
    info = client.publish("t", b"x", qos=1)
    return client, info, acked


def _handle(client: _AckingClient, body: bytes) -> None:
    packet = b"before" + body + b"bytes of the next packet"
    client._handle_whole(_PUBACK, packet, 6, 6 + len(body))


def test_an_ack_settles_its_message_once() -> None:
    client, info, acked = _client_with_one_unacked()
    _handle(client, info.mid.to_bytes(2))
    _handle(client, info.mid.to_bytes(2))  # a duplicate: the message is no longer ours
    assert info.mid not in client._out_messages  # paho will not send it again
    assert [(mid, reason.is_failure) for mid, reason in acked] == [(info.mid, False)]


def test_a_refusal_reaches_on_publish_as_a_failure() -> None:
    client, info, acked = _client_with_one_unacked()
    _handle(client, info.mid.to_bytes(2) + b"\x87")  # MQTT 5: not authorized
    assert [(mid, reason.value, reason.is_failure) for mid, reason in acked] == [
        (info.mid, 0x87, True)
    ]


def test_an_ack_for_an_unknown_packet_id_is_ignored() -> None:
    client, info, acked = _client_with_one_unacked()
    _handle(client, (info.mid + 1).to_bytes(2))
    assert acked == []
    assert info.mid in client._out_messages


def test_a_puback_shorter_than_its_packet_id_is_malformed() -> None:
    client, info, acked = _client_with_one_unacked()
    with pytest.raises(MalformedPacket):
        _handle(client, info.mid.to_bytes(2)[:1])
    assert acked == []
    assert info.mid in client._out_messages
