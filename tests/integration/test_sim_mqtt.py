"""The MQTT sensor fleet against a real Mosquitto: counts, topics, seqs, rate, reconnects.

Gateway tests trust the fleet's numbers ("N were acknowledged, so N must come out"), so these
tests check them against what an independent subscriber actually receives.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from edge_gateway_sim.brokers import MosquittoBroker
from edge_gateway_sim.mqtt_sensors import FleetConfig, MqttSensorFleet
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

MOSQUITTO = "/usr/sbin/mosquitto"
HOST = "127.0.0.1"


# -- a private broker (to be replaced by the shared conftest fixture) -----------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class _Mosquitto:
    """A mosquitto process on a free loopback port that a test may stop and restart."""

    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.config = directory / "mosquitto.conf"
        # max_queued_messages 0: a briefly slow subscriber must not lose messages to the
        # broker's default 1000-message queue limit; these tests count every message.
        self.config.write_text(
            f"listener {self.port} {HOST}\nallow_anonymous true\nmax_queued_messages 0\n"
        )
        self.log = directory / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[_Mosquitto]:
    mosquitto = _Mosquitto(tmp_path)
    mosquitto.start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


# -- an independent subscriber --------------------------------------------------------------------


@dataclass(frozen=True)
class _Received:
    topic: str
    payload: bytes
    at: float  # monotonic


class _Subscriber:
    """Records every message under `<prefix>/#` (QoS 1) with its arrival time."""

    def __init__(self, port: int, prefix: str) -> None:
        self.messages: list[_Received] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{prefix}")
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.connect(HOST, port)
        self._client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.append(_Received(msg.topic, bytes(msg.payload), time.monotonic()))

    def wait_for(self, count: int, timeout: float = 20.0) -> list[_Received]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # anything beyond `count` would be a bug: give it a chance to show
        return list(self.messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def prefix() -> str:
    return f"simtest-{secrets.token_hex(4)}"


@pytest.fixture
def subscriber(broker: _Mosquitto, prefix: str) -> Iterator[_Subscriber]:
    sub = _Subscriber(broker.port, prefix)
    try:
        yield sub
    finally:
        sub.close()


def _seqs_by_device(messages: list[_Received], prefix: str) -> tuple[dict[str, list[int]], int]:
    """Good messages' seqs per device, in arrival order, and the number of undecodable ones."""
    seqs: dict[str, list[int]] = defaultdict(list)
    bad = 0
    for m in messages:
        root, device, leaf = m.topic.split("/")
        assert (root, leaf) == (prefix, "state")
        try:
            doc = json.loads(m.payload)
        except ValueError:
            bad += 1
            continue
        assert set(doc) == {"temperature", "humidity", "battery", "seq", "ts"}
        seqs[device].append(doc["seq"])
    return seqs, bad


# -- tests ----------------------------------------------------------------------------------------


def test_fixed_count_at_qos1_arrives_exactly(
    broker: _Mosquitto, subscriber: _Subscriber, prefix: str
) -> None:
    n = 1000
    fleet = MqttSensorFleet(FleetConfig(port=broker.port, sensors=7, rate=5000, prefix=prefix))
    stats = fleet.run(count=n)

    assert (stats.published, stats.acked, stats.dropped, stats.malformed) == (n, n, 0, 0)
    received = subscriber.wait_for(n)
    assert len(received) == n
    seqs, bad = _seqs_by_device(received, prefix)
    assert bad == 0
    assert sorted(seqs) == [f"sim-{i:04d}" for i in range(1, 8)]
    for device, device_seqs in seqs.items():
        assert device_seqs == list(range(1, stats.last_seq[device] + 1)), device
    assert sum(stats.last_seq.values()) == n
    # Round-robin: every device gets its share.
    assert {len(s) for s in seqs.values()} == {n // 7, n // 7 + 1}


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5])
def test_every_acknowledgement_is_counted_once(broker: _Mosquitto, protocol: Any) -> None:
    """The fleet reads PUBACKs itself, and paho reads one that straddles two reads: either
    way each message is counted once."""
    stats = MqttSensorFleet(
        FleetConfig(port=broker.port, rate=20_000, protocol=protocol, prefix="acks")
    ).run(count=3000)
    assert (stats.published, stats.acked, stats.rejected) == (3000, 3000, 0)


def test_a_publish_the_broker_refuses_is_counted_as_rejected(tmp_path: Path) -> None:
    """With MQTT 5 a broker says no in the PUBACK (here: an ACL without write access)."""
    acl = tmp_path / "acl"
    acl.write_text("topic read #\n")
    with MosquittoBroker(tmp_path / "mq", [f"acl_file {acl}"]) as mq:
        config = FleetConfig(port=mq.port, rate=1000, protocol=MQTTProtocolVersion.MQTTv5)
        stats = MqttSensorFleet(config).run(count=100)
    assert (stats.published, stats.acked, stats.rejected) == (100, 0, 100)


def test_malformed_payloads_go_next_to_good_ones(
    broker: _Mosquitto, subscriber: _Subscriber, prefix: str
) -> None:
    n = 600
    config = FleetConfig(
        port=broker.port, sensors=3, rate=3000, prefix=prefix, malformed_fraction=0.1, seed=7
    )
    stats = MqttSensorFleet(config).run(count=n)

    assert stats.acked == stats.published == n
    assert 30 <= stats.malformed <= 90  # 10% of 600, give or take
    seqs, bad = _seqs_by_device(subscriber.wait_for(n), prefix)
    assert bad == stats.malformed
    assert sum(len(s) for s in seqs.values()) == n - stats.malformed
    for device, device_seqs in seqs.items():  # malformed messages do not use up a seq
        assert device_seqs == list(range(1, stats.last_seq[device] + 1)), device


def test_rate_is_held(broker: _Mosquitto, subscriber: _Subscriber, prefix: str) -> None:
    rate, duration = 2000.0, 2.0
    config = FleetConfig(port=broker.port, sensors=10, rate=rate, prefix=prefix)
    stats = MqttSensorFleet(config).run(duration=duration)

    assert 0.7 * rate * duration <= stats.published <= 1.3 * rate * duration
    assert stats.acked == stats.published
    received = subscriber.wait_for(stats.published)
    assert len(received) == stats.published
    span = received[-1].at - received[0].at
    measured = (len(received) - 1) / span
    assert 0.7 * rate <= measured <= 1.3 * rate, f"{measured:.0f} msg/s"
    # Evenly spread, not a burst at the start and a trickle later: half the messages arrive
    # in the first half of the time.
    first_half = sum(1 for m in received if m.at - received[0].at < span / 2)
    assert 0.35 <= first_half / len(received) <= 0.65


def test_background_run_until_stopped(broker: _Mosquitto, prefix: str) -> None:
    with MqttSensorFleet(FleetConfig(port=broker.port, rate=500, prefix=prefix)) as fleet:
        fleet.start()
        time.sleep(0.5)
        assert fleet.running
        stats = fleet.stop(timeout=10)
    assert not fleet.running
    assert 100 <= stats.published <= 400
    assert stats.acked == stats.published


def test_no_broker_is_a_clear_error() -> None:
    config = FleetConfig(port=_free_port(), connect_timeout=1.0)
    with pytest.raises(ConnectionError, match="is the broker running"):
        MqttSensorFleet(config).run(count=1)


def test_keeps_publishing_after_the_broker_restarts(broker: _Mosquitto, prefix: str) -> None:
    fleet = MqttSensorFleet(FleetConfig(port=broker.port, rate=200, prefix=prefix))
    fleet.start(duration=30)
    try:
        time.sleep(0.5)
        broker.stop()
        time.sleep(1.0)
        broker.start()
        deadline = time.monotonic() + 10
        while fleet.stats().connects < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        after_restart = fleet.stats().acked
        time.sleep(1.0)
        stats = fleet.stats()
    finally:
        final = fleet.stop(timeout=40)
    assert (stats.connects, stats.disconnects) == (2, 1)
    assert stats.acked >= after_restart + 100, "publishing resumed at about 200/s"
    assert final.acked == final.published
    assert final.dropped == 0
