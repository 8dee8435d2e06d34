"""The MQTT driver across connections: a connection that lasted starts the backoff afresh,
failed connects (a broker that stays away) make it grow; a stop waits at most for the connect
timeout; a resumed session loses filters the configuration no longer subscribes. In-process,
against a private Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from commit_hold import hold_commits
from edge_gateway_sim.brokers import MosquittoBroker
from harness import until
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from structlog.testing import capture_logs
from tcp_proxy import TcpProxy

from drivers.base import Sink
from drivers.mqtt.config import MqttDriverConfig
from drivers.mqtt.paho_loop import LoopClient
from drivers.mqtt.source import MqttSource
from gateway.backoff import Backoff
from gateway.buffer import Buffer
from gateway.errors import BufferFull
from gateway.model import Encoded, Reading


class _Discard:
    async def put(self, readings: Sequence[Reading] | Encoded) -> None:
        pass


def quick_source(name: str, port: int, sink: Sink | None = None, **settings: Any) -> MqttSource:
    """A source on `port` with client id `name`-test and topics `name`/#, reconnecting within
    a fraction of a second; its readings are discarded."""
    config = MqttDriverConfig.model_validate(
        {
            "type": "mqtt",
            "name": name,
            "port": port,
            "client_id": f"{name}-test",
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.2,
            "subscriptions": [{"topic": f"{name}/#"}],
            **settings,
        }
    )
    return MqttSource(config, "gw", sink or _Discard())


@contextlib.asynccontextmanager
async def running(source: MqttSource) -> AsyncIterator[MqttSource]:
    """The source runs for the block; it is stopped as a reload or a stop does (cancelled)."""
    task = asyncio.create_task(source.run())
    try:
        yield source
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def backoff_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, int]]:
    """For every ended run (a connection, or a connect attempt) handed to a backoff: how long
    it lasted, and the backoff's failure count before it."""
    runs: list[tuple[float, int]] = []
    delay_after = Backoff.delay_after

    def recording(self: Backoff, started: float, healthy_s: float = 60.0) -> float:
        runs.append((time.monotonic() - started, self.failures))
        return delay_after(self, started, healthy_s)

    monkeypatch.setattr(Backoff, "delay_after", recording)
    return runs


async def test_the_backoff_is_told_how_long_each_connection_lasted(
    mosquitto_broker: MosquittoBroker, backoff_runs: list[tuple[float, int]]
) -> None:
    source = quick_source("reconnect", mosquitto_broker.port)
    async with running(source):
        await until("connected", lambda: source.stats.state == "connected")
        await asyncio.sleep(1.0)  # a connection that lasts a while
        await asyncio.to_thread(mosquitto_broker.stop)
        await until("two failed connects after the lost one", lambda: len(backoff_runs) >= 3)
    lost, *failed = [length for length, _ in backoff_runs]
    assert lost >= 1.0  # the connection's whole life, not the moment it ended
    assert all(run < 0.5 for run in failed)  # a refused connect is a run of no length


async def test_a_stop_while_the_broker_does_not_answer_waits_at_most_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker host that is down drops the SYN: paho's connect blocks its thread until the
    connect timeout, and the stop waits for it (GatewayConfig.stop_overrun_s counts this)."""
    connect_timeout_s = 2.0
    monkeypatch.setattr("drivers.mqtt.source.CONNECT_TIMEOUT_S", connect_timeout_s)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        port = silent.getsockname()[1]
        # One connection fills the accept queue: Linux drops the SYNs of the next ones.
        with socket.create_connection(("127.0.0.1", port)):
            config = MqttDriverConfig.model_validate(
                {
                    "type": "mqtt",
                    "name": "silent",
                    "port": port,
                    "subscriptions": [{"topic": "silent/#"}],
                }
            )
            source = MqttSource(config, "gw", _Discard())
            task = asyncio.create_task(source.run())
            await asyncio.sleep(0.5)  # the connect is under way
            assert source.stats.state != "connected"
            stop_started = time.monotonic()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            stop_s = time.monotonic() - stop_started
    assert stop_s <= connect_timeout_s + 1.0


class _Kept:
    def __init__(self) -> None:
        self.readings: list[dict[str, Any]] = []
        """As the buffer would store them."""

    async def put(self, readings: Sequence[Reading] | Encoded) -> None:
        assert isinstance(readings, Encoded), "the MQTT source holds its readings encoded"
        self.readings.extend(json.loads(body) for _, _, body in readings.entries)


def _session_holding(port: int, client_id: str, topics: list[str]) -> None:
    """What an older configuration left: a persistent MQTT 5 session with these filters."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.connect("127.0.0.1", port, clean_start=False, properties=properties)
    client.loop_start()
    info = client.subscribe([(topic, 1) for topic in topics])
    deadline = time.monotonic() + 10
    while not client.is_connected() or info[0] != mqtt.MQTT_ERR_SUCCESS:
        assert time.monotonic() < deadline, "the old session's subscribe did not go out"
        time.sleep(0.05)
    time.sleep(0.5)  # the SUBACK
    client.disconnect()
    client.loop_stop()


async def test_a_resumed_session_drops_a_filter_another_one_now_covers(
    mosquitto_broker: MosquittoBroker,
) -> None:
    """The session kept `old/+/state` from before; the configuration has it and `old/#`, so only
    `old/#` is subscribed, and the kept one must go too, or each message comes twice."""
    await asyncio.to_thread(
        _session_holding, mosquitto_broker.port, "resumed", ["old/+/state", "old/#"]
    )
    config = MqttDriverConfig.model_validate(
        {
            "type": "mqtt",
            "name": "resumed",
            "port": mosquitto_broker.port,
            "client_id": "resumed",
            "subscriptions": [
                {"topic": "old/+/state", "device": "old/{device}/state"},
                {"topic": "old/#"},
            ],
        }
    )
    sink = _Kept()
    source = MqttSource(config, "gw", sink)
    async with running(source):
        await until("connected", lambda: source.stats.state == "connected")
        await asyncio.sleep(0.5)  # SUBACK and UNSUBACK
        await asyncio.to_thread(publish_one, mosquitto_broker.port, "old/kitchen/state")
        await until("a reading", lambda: len(sink.readings) >= 1)
        await asyncio.sleep(1.0)  # time for a second copy, had the broker sent one
    assert [r["device"] for r in sink.readings] == ["kitchen"]


def publish_one(port: int, topic: str) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="one-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, b'{"n": 1}', qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


async def test_a_client_taking_over_the_session_again_and_again_is_named(
    mosquitto_broker: MosquittoBroker,
) -> None:
    """Two gateways with one client id (a cloned SD card) take the session from each other:
    Mosquitto 2.0 closes the connection without a reason, so the driver names the likely
    cause once its connections keep ending within seconds."""
    source = quick_source("twin", mosquitto_broker.port)

    def take_over() -> None:  # the other gateway, connecting with the same client id
        other = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="twin-test")
        other.connect("127.0.0.1", mosquitto_broker.port)
        other.loop(0.2)
        other.disconnect()

    async with running(source):
        with capture_logs() as logs:
            await until("connected", lambda: source.stats.state == "connected")
            for _ in range(3):
                await asyncio.to_thread(take_over)
                await until("connected again", lambda: source.stats.state == "connected")
    named = [e for e in logs if e["event"].startswith("MQTT connections end within seconds")]
    assert named and named[0]["client_id"] == "twin-test", [e["event"] for e in logs]
    assert "another client with client id twin-test" in (source.stats.last_error or "")


async def test_a_broker_restarted_again_and_again_is_not_taken_for_another_client(
    mosquitto_broker: MosquittoBroker,
) -> None:
    """Connections that end within seconds because the broker restarts (an operator editing
    its configuration): a connect fails while it is away, so nobody took the session."""
    source = quick_source("restarted", mosquitto_broker.port, protocol="3.1.1")
    async with running(source):
        with capture_logs() as logs:
            for _ in range(4):
                await until("connected", lambda: source.stats.state == "connected")
                await asyncio.to_thread(mosquitto_broker.stop)
                await until("a connect failed", lambda: source.stats.state == "unreachable")
                await asyncio.to_thread(mosquitto_broker.start)
            await until("connected", lambda: source.stats.state == "connected")
    assert [e for e in logs if e["log_level"] == "error"] == []
    assert "another client" not in (source.stats.last_error or "")


async def test_a_connection_that_delivered_starts_the_backoff_afresh(
    mosquitto_broker: MosquittoBroker, backoff_runs: list[tuple[float, int]]
) -> None:
    """A broker restarting every half minute: each connection delivers, and none lasts the
    60 s that reset the backoff. The waits grew to reconnect_max_s, the gateway was away
    most of the time and the broker dropped what it could not queue (a soak's find)."""
    source = quick_source("restarts", mosquitto_broker.port, reconnect_max_s=0.4)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="restarts-publisher")
    async with running(source):
        for _ in range(3):
            await until("connected", lambda: source.stats.state == "connected")
            read = source.stats.readings
            publisher.connect("127.0.0.1", mosquitto_broker.port)
            publisher.loop_start()
            publisher.publish("restarts/d1", b'{"n": 1}', qos=1).wait_for_publish(5)
            publisher.disconnect()
            publisher.loop_stop()
            await until("the reading is read", lambda read=read: source.stats.readings > read)
            await asyncio.sleep(0.4)
            await asyncio.to_thread(mosquitto_broker.stop)
            await asyncio.sleep(1.0)  # failed connects meanwhile grow the backoff
            await asyncio.to_thread(mosquitto_broker.start)
    connections = [failures for length, failures in backoff_runs if length > 0.3]
    assert len(connections) >= 3
    assert connections == [0] * len(connections)  # each starts the backoff afresh


async def test_a_reset_connection_is_one_warning_that_says_so(
    mosquitto_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker's host fails while a packet is half read. paho's reason for the loss is
    'Unspecified error', and paho logged 'failed to receive on socket: Connection reset by
    peer' at error level beside the driver's warning: now the warning says what happened,
    once."""
    async with TcpProxy(mosquitto_broker.port) as proxy:
        source = quick_source("reset", proxy.port)
        async with running(source):
            await until("connected", lambda: source.stats.state == "connected")
            with capture_logs() as logs, caplog.at_level(logging.WARNING, logger="paho.mqtt"):
                proxy.send_to_clients(b"\x32")  # a PUBLISH begins, and its rest never comes
                await asyncio.sleep(0.3)
                proxy.reset()
                await until("the loss is logged", lambda: len(logs) > 0)
                await until("connected again", lambda: source.stats.state == "connected")
    lost = [e for e in logs if e["event"].startswith("MQTT connection lost")]
    assert [e["reason"] for e in lost] == ["[Errno 104] Connection reset by peer"], logs
    assert [r.getMessage() for r in caplog.records if r.name.startswith("paho")] == []


async def test_a_stopped_sources_client_logs_nothing_when_it_is_freed(
    mosquitto_broker: MosquittoBroker,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop closes the connection itself, after its last PUBACKs. paho closes the socket
    again when the client is freed (at some later garbage collection, perhaps after the
    loop has closed) and called back to take it off the loop, which failed: an error line
    'Caught exception in on_socket_close: Invalid file descriptor: -1' (or 'Event loop is
    closed') after stops, reloads and driver restarts."""
    clients: list[mqtt.Client] = []
    make = MqttSource._client

    def kept(self: MqttSource) -> LoopClient:
        clients.append(make(self))
        return clients[-1]

    monkeypatch.setattr(MqttSource, "_client", kept)
    source = quick_source("freed", mosquitto_broker.port)
    async with running(source):
        await until("connected", lambda: source.stats.state == "connected")
    with caplog.at_level(logging.DEBUG, logger="paho.mqtt"):
        clients[0].__del__()  # what paho does when the client is freed
        await asyncio.sleep(0.1)  # anything it handed to the loop
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_broker_that_closes_the_connection_is_named_as_such(
    mosquitto_broker: MosquittoBroker,
) -> None:
    """Mosquitto killed: no DISCONNECT from it, its socket just closes."""
    source = quick_source("closed", mosquitto_broker.port)
    async with running(source):
        await until("connected", lambda: source.stats.state == "connected")
        with capture_logs() as logs:
            await asyncio.to_thread(mosquitto_broker.kill)
            await until("the loss is logged", lambda: len(logs) > 0)
    lost = [e for e in logs if e["event"].startswith("MQTT connection lost")]
    assert [e["reason"] for e in lost] == ["the broker closed the connection"], logs


class _RefusingOnce:
    """The buffer, refusing the first put as a full one with `when_full: reject_new` does."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self.refused = False

    async def put(self, readings: Sequence[Reading] | Encoded) -> None:
        if not self.refused:
            self.refused = True
            raise BufferFull("full")
        await self.buffer.put(readings)


@pytest.mark.parametrize("refused_first", [False, True])
async def test_a_stop_during_a_commit_acknowledges_what_the_buffer_took(
    mosquitto_broker: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    refused_first: bool,
) -> None:
    """A reload that restarts the MQTT driver while the buffer commits its readings (at
    once, or on a retry after a refusal): they are on disk, but were never acknowledged, so
    the resumed session brought them again, as readings with new ids. The stop now
    acknowledges what the buffer took."""
    async with Buffer(tmp_path / "buffer.db", max_bytes=10**8, commit_interval=0.2) as buffer:
        sink = _RefusingOnce(buffer) if refused_first else buffer
        source = quick_source("acked", mosquitto_broker.port, sink=sink)
        task = asyncio.create_task(source.run())
        await until("connected", lambda: source.stats.state == "connected")
        begun, finish = hold_commits(buffer, monkeypatch)
        await asyncio.to_thread(publish_one, mosquitto_broker.port, "acked/kitchen")
        await asyncio.to_thread(begun.wait, 5)  # the reading is being committed
        task.cancel()  # the reload
        await asyncio.sleep(0.2)
        finish.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        monkeypatch.undo()
        async with running(quick_source("acked", mosquitto_broker.port, sink=buffer)) as again:
            await until("connected", lambda: again.stats.state == "connected")
            await asyncio.sleep(1.0)  # time for the broker to send it again, had it kept it
        chunks = await buffer.fetch(0, 10)
    assert len([r for chunk in chunks for r in chunk.readings]) == 1


async def test_stops_while_messages_stream_in_store_each_message_once(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Reloads that restart the MQTT driver while a sensor publishes. The stop's last acks
    were lost when the socket closed with the broker's next messages unread (a reset: the
    kernel drops what the broker has not read yet), and the broker sent those messages
    again, stored twice under new ids (a review's chaos run)."""
    sent = 4000
    publishing = asyncio.create_task(asyncio.to_thread(_publish_many, mosquitto_broker.port, sent))
    async with Buffer(tmp_path / "buffer.db", max_bytes=10**8) as buffer:
        for _ in range(6):
            async with running(quick_source("flow", mosquitto_broker.port, sink=buffer)) as s:
                await until("connected", lambda s=s: s.stats.state == "connected")
                await asyncio.sleep(0.3)
        await publishing
        async with running(quick_source("flow", mosquitto_broker.port, sink=buffer)):
            stored = -1
            while buffer.last_seq != stored:  # until the broker has nothing more for us
                stored = buffer.last_seq
                await asyncio.sleep(1.0)
        chunks = await buffer.fetch(0, 2 * sent)
    stored_ns = [json.loads(r.body)["values"]["n"] for c in chunks for r in c.readings]
    assert len(stored_ns) > sent / 2  # Mosquitto drops beyond max_queued_messages meanwhile
    assert len(stored_ns) == len(set(stored_ns))


def _publish_many(port: int, count: int) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flow-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    published = []
    for n in range(count):
        published.append(client.publish("flow/d1", json.dumps({"n": n}), qos=1))
        if n % 200 == 199:
            time.sleep(0.05)  # a sensor fleet's pace: the broker sends to us as we stop
    for message in published:
        message.wait_for_publish(30)  # Mosquitto has it (and queues it for the gateway)
    client.disconnect()
    client.loop_stop()
