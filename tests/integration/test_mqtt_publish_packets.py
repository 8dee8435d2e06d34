"""`LoopClient` reads PUBLISH packets itself: every field must come out as paho would give it.

Real Mosquitto, real paho publishers, MQTT 5 and 3.1.1: PUBLISH packets with properties the
gateway skips (user properties, content type, expiry, correlation data, response topic),
payloads larger than one 16 KiB read, an empty payload, a UTF-8 topic, QoS 0 and 1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from edge_gateway_sim.brokers import MosquittoBroker
from harness import until
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.mqtt.config import MqttDriverConfig
from drivers.mqtt.source import MqttSource
from gateway.model import Encoded, Reading


class Collected:
    def __init__(self) -> None:
        self.readings: list[dict[str, Any]] = []
        """As the buffer would store them."""

    async def put(self, readings: Sequence[Reading] | Encoded) -> None:
        assert isinstance(readings, Encoded), "the MQTT source holds its readings encoded"
        self.readings.extend(json.loads(body) for _, _, body in readings.entries)


def _properties() -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("site", "shed"), ("k" * 300, "v" * 300)]  # a long property block
    props.ContentType = "application/json"
    props.MessageExpiryInterval = 3600
    props.CorrelationData = b"\x00\x01\x02"
    props.ResponseTopic = "replies/here"
    return props


def _publish(port: int, protocol: int, messages: list[tuple[str, bytes, int]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol)
    client.connect("127.0.0.1", port)
    client.loop_start()
    props = _properties() if protocol == mqtt.MQTTv5 else None
    infos = [client.publish(t, p, qos=q, properties=props) for t, p, q in messages]
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_publish_packets_are_read_exactly(mosquitto: MosquittoBroker, protocol: str) -> None:
    prefix = f"loop{protocol.replace('.', '')}"
    config = MqttDriverConfig.model_validate(
        {
            "type": "mqtt",
            "name": "loop",
            "port": mosquitto.port,
            "protocol": protocol,
            "client_id": f"loop-test-{prefix}",
            "max_payload_bytes": 1_000_000,
            "subscriptions": [
                {"topic": f"{prefix}/+/state", "device": f"{prefix}/{{device}}/state"},
                {"topic": f"{prefix}/q0/+", "device": f"{prefix}/q0/{{device}}", "qos": 0},
            ],
        }
    )
    big_text = "x" * 100_000  # several reads of 16 KiB, and a 3-byte remaining length
    messages = [
        (f"{prefix}/small/state", b'{"n": 1}', 1),
        (f"{prefix}/big/state", json.dumps({"n": 2, "text": big_text}).encode(), 1),
        (f"{prefix}/empty/state", b"", 1),  # no values: counted as malformed, not a reading
        (f"{prefix}/caf\u00e9/state", b'{"n": 3}', 1),
        (f"{prefix}/q0/zero", b'{"n": 4}', 0),
    ] + [(f"{prefix}/many/state", b'{"n": %d}' % (100 + i), 1) for i in range(300)]
    sink = Collected()
    source = MqttSource(config, "gw", sink)
    running = asyncio.create_task(source.run())
    try:
        await until("subscribed", lambda: source.stats.state == "connected")
        await asyncio.sleep(0.5)  # the SUBACK follows the CONNACK
        v5 = protocol == "5"
        await asyncio.to_thread(
            _publish, mosquitto.port, mqtt.MQTTv5 if v5 else mqtt.MQTTv311, messages
        )
        await until("all readings", lambda: len(sink.readings) >= 304)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    got = [(r["device"], r["values"]) for r in sink.readings]
    assert got[:4] == [
        ("small", {"n": 1}),
        ("big", {"n": 2, "text": big_text}),
        ("caf\u00e9", {"n": 3}),
        ("zero", {"n": 4}),
    ]
    assert [values["n"] for device, values in got[4:]] == list(range(100, 400))
    assert source.stats.malformed == 1  # the empty payload
