"""Which limit decides how many QoS 1 messages Mosquitto sends to one subscriber unacknowledged.

For each broker configuration and client kind, a subscriber with manual acks takes messages
without acknowledging them while a publisher sends `count` QoS 1 messages. What arrives before
any PUBACK is the in-flight window the broker allows; what arrives after we acknowledge
everything is what it queued meanwhile; the rest it dropped.

Then the subscriber acknowledges in batches every 45 ms, as the gateway does after each group
commit, while the publisher sends `count` more at a steady 5,000/s: the most messages it ever
holds unacknowledged shows whether the broker keeps to the window once PUBACKs flow.

    python -m bench.mosquitto_limits
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from edge_gateway_sim.brokers import MosquittoBroker
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TOPIC = "probe/limits"


@dataclass(frozen=True, slots=True)
class Case:
    """One broker configuration and one kind of subscriber."""

    broker: tuple[str, ...]
    protocol: str  # "3.1.1" or "5"
    receive_maximum: int | None  # MQTT 5 CONNECT property; None: not sent (65,535 implied)

    @property
    def label(self) -> str:
        conf = ", ".join(self.broker) or "defaults"
        client = f"MQTT {self.protocol}"
        if self.protocol == "5":
            rm = self.receive_maximum
            client += f", receive maximum {rm}" if rm is not None else ", no receive maximum"
        return f"{conf} | {client}"


@dataclass(frozen=True, slots=True)
class Outcome:
    case: str
    in_flight: int
    """Delivered before the subscriber acknowledged anything: the broker's window."""
    queued: int
    """Delivered only after acknowledgements: what the broker kept meanwhile."""
    dropped: int
    """Published (and PUBACKed to the publisher) but never delivered."""
    max_unacked_acking: int
    """Most messages held unacknowledged while acknowledging in batches every 45 ms."""


CASES = (
    Case((), "3.1.1", None),
    Case((), "5", None),
    Case((), "5", 2000),
    Case((), "5", 100),
    Case(("max_inflight_messages 0",), "3.1.1", None),
    Case(("max_inflight_messages 0",), "5", 2000),
    Case(("max_inflight_messages 1000",), "5", 2000),
    Case(("max_inflight_messages 1000",), "3.1.1", None),
    Case(("max_inflight_messages 0", "max_queued_messages 100000"), "5", 2000),
)


class _Subscriber:
    def __init__(self, port: int, case: Case) -> None:
        v5 = case.protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"limits-sub-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            manual_ack=True,
        )
        self.mids: list[int] = []
        self.unacked: list[int] = []
        self.max_unacked = 0
        self.lock = threading.Lock()
        self.acking = False
        self.batching = False
        self.subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        properties = None
        if v5 and case.receive_maximum is not None:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.ReceiveMaximum = case.receive_maximum
        self.client.connect("127.0.0.1", port, properties=properties)
        self.client.subscribe(TOPIC, qos=1)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("no SUBACK from mosquitto")

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.mids.append(message.mid)
            if self.batching:
                self.unacked.append(message.mid)
                self.max_unacked = max(self.max_unacked, len(self.unacked))
            elif self.acking:
                client.ack(message.mid, 1)

    def ack_batch(self) -> None:
        """Acknowledge everything held (called every 45 ms in the second phase)."""
        with self.lock:
            mids, self.unacked = self.unacked, []
        for mid in mids:
            self.client.ack(mid, 1)

    def count(self) -> int:
        with self.lock:
            return len(self.mids)

    def ack_all(self) -> None:
        with self.lock:
            self.acking = True
            for mid in self.mids:
                self.client.ack(mid, 1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _settle(count: Any, quiet: float = 0.5, limit: float = 15.0) -> int:
    """Wait until `count()` has not changed for `quiet` seconds."""
    deadline = time.monotonic() + limit
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return int(last)


def probe(base: Path, case: Case, count: int = 3000) -> Outcome:
    with MosquittoBroker(base, list(case.broker)) as broker:
        sub = _Subscriber(broker.port, case)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="limits-pub")
        try:
            pub.max_inflight_messages_set(0)
            pub.max_queued_messages_set(0)
            pub.connect("127.0.0.1", broker.port)
            pub.loop_start()
            infos = [pub.publish(TOPIC, b"x" * 80, qos=1) for _ in range(count)]
            for info in infos:
                info.wait_for_publish(15)
            in_flight = _settle(sub.count)
            sub.ack_all()
            total = _settle(sub.count)
            max_unacked = _steady(pub, sub, count)
        finally:
            pub.disconnect()
            pub.loop_stop()
            sub.close()
    return Outcome(case.label, in_flight, total - in_flight, count - total, max_unacked)


def _steady(pub: mqtt.Client, sub: _Subscriber, count: int, rate: float = 5000.0) -> int:
    """Publish `count` at `rate` while the subscriber acks in batches every 45 ms."""
    with sub.lock:
        sub.batching = True
    stop = threading.Event()

    def acker() -> None:
        while not stop.wait(0.045):
            sub.ack_batch()

    thread = threading.Thread(target=acker, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        for i in range(count):
            pub.publish(TOPIC, b"x" * 80, qos=1)
            if i % 50 == 49:  # 50 messages per 10 ms at 5,000/s
                time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        _settle(sub.count)
    finally:
        stop.set()
        thread.join()
        sub.ack_batch()
    return sub.max_unacked


def run_all(base: Path, count: int = 3000) -> list[Outcome]:
    return [probe(base / f"case{i}", case, count) for i, case in enumerate(CASES)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mosquitto_limits", description=__doc__)
    parser.add_argument("--count", type=int, default=3000, help="messages per case")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as tmp:
        for outcome in run_all(Path(tmp), args.count):
            if args.json:
                print(json.dumps(asdict(outcome)))
            else:
                print(
                    f"{outcome.case:<70} in flight {outcome.in_flight:>5}  "
                    f"queued {outcome.queued:>5}  dropped {outcome.dropped:>5}  "
                    f"max unacked while acking {outcome.max_unacked_acking:>5}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
