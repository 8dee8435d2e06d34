"""A QoS 0 flood must not take the event loop from the rest of the gateway.

The MQTT source shares the loop with the publisher, the status file and the watchdog
pings. Were it to parse for as long as the socket holds data, a flood would starve them
all: nothing published, and under systemd a gateway restarted for missing its pings.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence

from edge_gateway_sim.brokers import MosquittoBroker
from harness import until

from drivers.mqtt.config import MqttDriverConfig
from drivers.mqtt.source import MqttSource
from gateway.model import Reading


class CountingSink:
    """Takes every reading at once: the flood, not the disk, is what this test is about."""

    def __init__(self) -> None:
        self.readings = 0

    async def put(self, readings: Sequence[Reading]) -> None:
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
