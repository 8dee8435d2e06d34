"""More MQTT messages than intake takes: the source stays fair and connected.

The MQTT source shares the loop with the publisher, the status file and the watchdog
pings. Were it to parse for as long as the socket holds data, a flood would starve them
all: nothing published, and under systemd a gateway restarted for missing its pings.
When intake is behind it leaves the socket unread, which must not look like a dead broker.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from edge_gateway_sim.brokers import MosquittoBroker
from harness import until
from structlog.testing import capture_logs

from drivers.mqtt.config import MqttDriverConfig
from drivers.mqtt.source import MqttSource
from gateway.errors import BufferFull
from gateway.model import Encoded, Reading


class CountingSink:
    """Takes every reading at once: the flood, not the disk, is what this test is about."""

    def __init__(self) -> None:
        self.readings = 0

    async def put(self, readings: Sequence[Reading] | Encoded) -> None:
        self.readings += len(readings)


async def test_a_qos0_flood_leaves_the_other_tasks_their_turns(
    mosquitto_broker: MosquittoBroker,
) -> None:
    config = MqttDriverConfig.model_validate(
        {
            "type": "mqtt",
            "name": "flooded",
            "port": mosquitto_broker.port,
            "subscriptions": [
                {"topic": "flood/+/state", "device": "flood/{device}/state", "qos": 0}
            ],
        }
    )
    sink = CountingSink()
    source = MqttSource(config, "gw", sink)
    running = asyncio.create_task(source.run())
    flood = None
    try:
        await until("connected", lambda: source.stats.state == "connected")
        await asyncio.sleep(0.5)  # the SUBACK follows the CONNACK
        flood = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge_gateway_sim.cli",
            "mqtt",
            "--port",
            str(mosquitto_broker.port),
            "--prefix",
            "flood",
            "--qos",
            "0",
            "--rate",
            "200000",  # as fast as one process can publish
            "--duration",
            "6",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        gaps = []
        last = time.monotonic()
        while flood.returncode is None:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        assert sink.readings > 10_000, "the flood did not reach the source"
        # Here about 0.3 s at worst; before the fix one turn of the source took 1.6 s and more.
        assert max(gaps) < 1.0, f"another task waited {max(gaps):.2f} s for its turn"
    finally:
        if flood is not None and flood.returncode is None:
            flood.kill()
            await flood.wait()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


class RefusingSink:
    """A full buffer (`when_full: reject_new`) until `refusing` is cleared."""

    def __init__(self) -> None:
        self.refusing = True
        self.readings: list[dict[str, Any]] = []
        """As the buffer would store them."""

    async def put(self, readings: Sequence[Reading] | Encoded) -> None:
        if self.refusing:
            raise BufferFull("buffer full (test)")
        assert isinstance(readings, Encoded), "the MQTT source holds its readings encoded"
        self.readings.extend(json.loads(body) for _, _, body in readings.entries)


def _publish_qos1(port: int, count: int) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paused-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(f"paused/d{i % 10}", b'{"n": %d}' % i, qos=1) for i in range(count)]
    for info in infos:
        info.wait_for_publish(20)
    client.disconnect()
    client.loop_stop()


async def test_a_socket_left_unread_for_longer_than_keepalive_stays_connected(
    mosquitto_broker: MosquittoBroker,
) -> None:
    """The buffer refuses for three keepalive intervals while more messages arrive than
    intake holds (a receive maximum above its bound): the broker's PINGRESPs wait unread
    behind them. paho used to take that for a dead broker and reconnect every keepalive,
    and messages read on old connections came again: 5,009 readings of 3,000."""
    config = MqttDriverConfig.model_validate(
        {
            "type": "mqtt",
            "name": "paused",
            "port": mosquitto_broker.port,
            "keepalive_s": 5,
            "receive_maximum": 5000,
            "subscriptions": [{"topic": "paused/+", "device": "paused/{device}"}],
        }
    )
    sink = RefusingSink()
    source = MqttSource(config, "gw", sink)
    running = asyncio.create_task(source.run())
    try:
        with capture_logs() as logs:
            await until("connected", lambda: source.stats.state == "connected")
            await asyncio.sleep(0.5)  # the SUBACK follows the CONNACK
            await asyncio.to_thread(_publish_qos1, mosquitto_broker.port, 3000)
            await asyncio.sleep(3 * 5)
            assert source.stats.state == "connected"
            sink.refusing = False
            await until("every message read", lambda: len(sink.readings) >= 3000, 30)
            await asyncio.sleep(2)  # time for redeliveries, had there been any
        assert [e for e in logs if e["event"].startswith("MQTT connection lost")] == []
        assert sorted(r["values"]["n"] for r in sink.readings) == list(range(3000))
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
