"""The baseline: a minimal MQTT -> AMQP bridge with no buffer, one reading per message.

paho-mqtt 2 subscribes with QoS 1 and manual acks; each message becomes one AMQP message
(the gateway's message format, one reading) published through aio-pika with publisher
confirms; the MQTT PUBACK goes out once RabbitMQ has confirmed. Nothing touches the disk, so
nothing survives a crash of the bridge that the MQTT broker does not still hold.

It is what the benchmark measures the gateway against, run the same way (a child process):

    python -m bench.direct_bridge --mqtt-port 1883 --amqp-url amqp://guest:guest@127.0.0.1/ \\
        --exchange bench --topic 'bench/+/state'

It prints "bridge started" once connected to both brokers and subscribed, and stops on
SIGTERM or SIGINT (in-flight publishes get a few seconds to be confirmed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import sys
from datetime import UTC, datetime
from typing import Any

import aio_pika
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

QOS0_BACKLOG_LIMIT = 10_000
"""QoS 0 has no flow control: beyond this many messages waiting, drop (as the gateway does)."""
PUBLISH_WINDOW = 1_000
"""Publishes awaiting a confirm, at most; more messages wait their turn (QoS 1: MQTT's receive
maximum bounds them)."""


def to_reading(device: str, payload: bytes, rid: str, source: str) -> dict[str, Any]:
    """The simulator's JSON payload as one reading of the gateway's message format."""
    doc = json.loads(payload)
    ts = doc.pop("ts")
    stamp = datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)
    return {
        "id": rid,
        "device": device,
        "ts": stamp.isoformat(timespec="microseconds") + "Z",
        "values": doc,
        "source": source,
    }


class Bridge:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stream = secrets.token_hex(6)
        self.seq = 0
        self.pending = 0
        self.published = 0
        self.dropped = 0
        self.failed = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.window = asyncio.Semaphore(PUBLISH_WINDOW)
        self.head = {"v": 1, "gateway": args.gateway_id, "site": args.site}
        self.device_level = args.topic.split("/").index("+")

    async def run(self, stop: asyncio.Event) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        connection = await aio_pika.connect(args.amqp_url, timeout=10)
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            args.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        v5 = args.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=args.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        subscribed = asyncio.Event()

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if not reason.is_failure:
                c.subscribe(args.topic, qos=1)

        def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
            # One hand-over to the event loop per message: the simplest thing that works.
            loop.call_soon_threadsafe(
                self.forward, exchange, client, message.topic, message.payload, message.qos,
                message.mid,
            )  # fmt: skip

        client.on_connect = on_connect
        client.on_subscribe = lambda *_: loop.call_soon_threadsafe(subscribed.set)
        client.on_message = on_message
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 3600
            if args.receive_maximum:
                properties.ReceiveMaximum = args.receive_maximum
        client.connect_async(
            "127.0.0.1",
            args.mqtt_port,
            keepalive=30,
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        client.loop_start()
        try:
            await asyncio.wait_for(subscribed.wait(), 10)
            print("bridge started", flush=True)
            await stop.wait()
        finally:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
            if self.tasks:
                await asyncio.wait(self.tasks, timeout=5)
            await connection.close()
            print(
                json.dumps(
                    {
                        "msg": "bridge stopped",
                        "published": self.published,
                        "dropped": self.dropped,
                        "failed": self.failed,
                    }
                ),
                flush=True,
            )

    def forward(
        self,
        exchange: aio_pika.abc.AbstractExchange,
        client: mqtt.Client,
        topic: str,
        payload: bytes,
        qos: int,
        mid: int,
    ) -> None:
        if qos == 0 and self.pending >= QOS0_BACKLOG_LIMIT:
            self.dropped += 1
            return
        self.pending += 1
        task = asyncio.ensure_future(self.publish(exchange, client, topic, payload, qos, mid))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def publish(
        self,
        exchange: aio_pika.abc.AbstractExchange,
        client: mqtt.Client,
        topic: str,
        payload: bytes,
        qos: int,
        mid: int,
    ) -> None:
        try:
            device = topic.split("/")[self.device_level]
            self.seq += 1
            rid = f"{self.stream}-{self.seq}"
            body = {**self.head, "readings": [to_reading(device, payload, rid, "bridge")]}
            message = aio_pika.Message(
                json.dumps(body, separators=(",", ":")).encode(),
                message_id=rid,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            async with self.window:
                key = f"{self.args.site}.{device}"
                await exchange.publish(message, key, mandatory=True, timeout=10)
        except Exception as exc:  # no retry: the MQTT broker resends what we do not ack
            self.failed += 1
            print(f"publish failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return
        finally:
            self.pending -= 1
        self.published += 1
        if qos:
            client.ack(mid, qos)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.direct_bridge", description=__doc__)
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--topic", default="sensors/+/state", help="one '+' level = the device")
    parser.add_argument("--site", default="sim-site")
    parser.add_argument("--gateway-id", default="direct-bridge")
    parser.add_argument("--client-id", default="direct-bridge")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    parser.add_argument(
        "--receive-maximum",
        type=int,
        default=2000,
        help="MQTT 5 receive maximum (0: not sent); default 2000, as the gateway's",
    )
    args = parser.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Bridge(args).run(stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
