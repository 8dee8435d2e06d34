"""The MQTT driver against a real Mosquitto: payload formats, oversized payloads, credentials."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from edge_gateway_sim.brokers import MosquittoBroker, RabbitMQNode
from edge_gateway_sim.consumer import ReadingCollector
from edge_gateway_sim.gateway_process import GatewayProcess
from harness import report_after_now, until, validate_message, write_gateway_yaml

from gateway.status import read_status


def _config(tmp_path: Path, rabbit: RabbitMQNode, port: int, exchange: str, driver: str) -> Path:
    return write_gateway_yaml(
        tmp_path,
        rabbit.url,
        exchange,
        f"""\
  - type: mqtt
    name: field
    port: {port}
    client_id: gw-{exchange}
{driver}
""",
    )


def _publish(port: int, messages: list[tuple[str, bytes]], **auth: str) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-publisher")
    if auth:
        client.username_pw_set(auth["username"], auth["password"])
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


async def test_number_and_senml_payloads_arrive_and_oversized_ones_are_counted(
    rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    exchange = "formats"
    config = _config(
        tmp_path,
        rabbitmq,
        mosquitto.port,
        exchange,
        """\
    max_payload_bytes: 300
    subscriptions:
      - topic: formats/meters/+/power
        device: "formats/meters/{device}/power"
        format: number
        value: power
        unit: W
      - topic: formats/senml/#
        format: senml
""",
    )
    senml = [
        {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": 1.276020076e9, "bu": "A", "n": "voltage",
         "u": "V", "v": 120.1},
        {"n": "current", "t": -5, "v": 1.2},
        {"n": "current", "t": -4, "v": 1.3},
    ]  # fmt: skip
    async with ReadingCollector(
        rabbitmq.url, exchange, queue="formats", validate=validate_message, keep_readings=True
    ) as collector:
        with GatewayProcess(config, tmp_path / "gateway.log") as gateway:
            gateway.start()
            await asyncio.to_thread(
                _publish,
                mosquitto.port,
                [
                    ("formats/meters/m1/power", b" 123.5\n"),
                    # beyond 4 x max_payload_bytes + 64 KiB: the broker does not send it
                    ("formats/meters/m3/power", b"9" * 200_000),
                    ("formats/senml/pack", json.dumps(senml).encode()),
                    ("formats/meters/m2/power", b"9" * 400),
                ],
            )
            assert await collector.wait_until(lambda got: got.unique >= 4, timeout=20)
            driver = (await report_after_now(tmp_path / "state"))["drivers"]["field"]
            assert gateway.terminate() == 0
    by_device: dict[str, list[dict[str, Any]]] = {}
    for reading in collector.received.kept:
        by_device.setdefault(reading["device"], []).append(reading)
    assert by_device["m1"][0]["values"] == {"power": 123.5}
    assert by_device["m1"][0]["units"] == {"power": "W"}
    senml_readings = sorted(by_device["urn:dev:mac:0024befffe804ff1"], key=lambda r: r["ts"])
    assert [r["ts"] for r in senml_readings] == [
        "2010-06-08T18:01:11.000000Z",
        "2010-06-08T18:01:12.000000Z",
        "2010-06-08T18:01:16.000000Z",
    ]
    assert senml_readings[2]["values"] == {"voltage": 120.1}
    assert senml_readings[2]["units"] == {"voltage": "V"}
    assert senml_readings[0]["values"] == {"current": 1.2}
    assert senml_readings[0]["units"] == {"current": "A"}
    assert "m2" not in by_device and "m3" not in by_device
    assert driver["oversized"] == 1  # m2; m3 never came (MQTT 5 Maximum Packet Size)
    assert "MQTT payload too large; skipped" in (tmp_path / "gateway.log").read_text()


async def test_refused_mqtt_credentials_are_reported_and_fixed_ones_work(
    rabbitmq: RabbitMQNode, tmp_path: Path
) -> None:
    passwords = tmp_path / "mosquitto.passwd"
    await asyncio.to_thread(
        subprocess.run,
        ["mosquitto_passwd", "-c", "-b", str(passwords), "gateway", "right"],
        check=True,
    )
    passwords.chmod(0o644)
    secret = tmp_path / "mqtt-password"
    secret.write_text("wrong\n")
    exchange = "credentials"
    config = _config(
        tmp_path,
        rabbitmq,
        0,
        exchange,
        f"""\
    username: gateway
    password_file: {secret}
    reconnect_max_s: 1
    subscriptions:
      - topic: credentials/+
        device: "credentials/{{device}}"
        format: number
""",
    )
    with MosquittoBroker(
        tmp_path / "mosquitto", ["allow_anonymous false", f"password_file {passwords}"]
    ) as mosquitto:
        config.write_text(config.read_text().replace("port: 0", f"port: {mosquitto.port}"))
        async with ReadingCollector(rabbitmq.url, exchange, queue="credentials") as collector:
            with GatewayProcess(config, tmp_path / "gateway.log", mqtt=False) as gateway:
                gateway.start()
                await until(
                    "the refusal is logged",
                    lambda: "MQTT broker refused the connection" in gateway.log.read_text(),
                )
                driver = (await report_after_now(tmp_path / "state"))["drivers"]["field"]
                assert driver["state"] == "refused"
                refused = next(
                    json.loads(line)
                    for line in gateway.log.read_text().splitlines()
                    if "MQTT broker refused the connection" in line
                )  # who was refused, where: what to look up in the broker's password file
                assert (refused["port"], refused["username"]) == (mosquitto.port, "gateway")
                assert refused["client_id"]
                assert gateway.terminate() == 0
                secret.write_text("right\n")
                gateway.ready_markers.append(b'"MQTT subscriptions active"')
                gateway.start()
                await asyncio.to_thread(
                    _publish,
                    mosquitto.port,
                    [("credentials/t1", b"21.5")],
                    username="gateway",
                    password="right",
                )
                assert await collector.wait_until(lambda got: got.unique >= 1, timeout=20)
                assert gateway.terminate() == 0


async def test_an_unreachable_broker_is_reported_and_its_readings_arrive_once_it_runs(
    rabbitmq: RabbitMQNode, tmp_path: Path
) -> None:
    exchange = "unreachable"
    broker = MosquittoBroker(tmp_path / "mosquitto")  # its port is chosen, nothing listens yet
    config = _config(
        tmp_path,
        rabbitmq,
        broker.port,
        exchange,
        """\
    reconnect_max_s: 1
    subscriptions:
      - topic: unreachable/+
        device: "unreachable/{device}"
        format: number
""",
    )
    async with ReadingCollector(rabbitmq.url, exchange, queue="unreachable") as collector:
        with GatewayProcess(config, tmp_path / "gateway.log", mqtt=False) as gateway:
            gateway.start()  # the gateway starts without its MQTT broker
            await until(
                "the driver reports the broker unreachable",
                lambda: "MQTT broker unreachable; retrying with backoff" in gateway.log.read_text(),
            )
            await until(
                "status says unreachable",
                lambda: (
                    read_status(tmp_path / "state")["gateway"]["drivers"]["field"]["state"]
                    == "unreachable"
                ),
            )
            with broker:
                await until(
                    "subscribed once the broker runs",
                    lambda: "MQTT subscriptions active" in gateway.log.read_text(),
                )
                await asyncio.to_thread(_publish, broker.port, [("unreachable/t1", b"21.5")])
                assert await collector.wait_until(lambda got: got.unique >= 1, timeout=20)
            assert f'"port": {broker.port}' in gateway.log.read_text()  # where it tried
            assert gateway.terminate() == 0


async def _through_a_gateway(
    tmp_path: Path,
    rabbit: RabbitMQNode,
    mosquitto: MosquittoBroker,
    driver: str,
    messages: list[tuple[str, bytes]],
    count: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A gateway with `driver`'s settings takes `messages`: the first `count` readings that
    arrive, and the driver's status reported after them (time for any more to come)."""
    exchange = tmp_path.name[:40]
    config = _config(tmp_path, rabbit, mosquitto.port, exchange, driver)
    async with ReadingCollector(
        rabbit.url, exchange, queue=exchange, validate=validate_message, keep_readings=True
    ) as collector:
        with GatewayProcess(config, tmp_path / "gateway.log") as gateway:
            gateway.start()
            await asyncio.to_thread(_publish, mosquitto.port, messages)
            assert await collector.wait_until(lambda got: got.unique >= count, timeout=20)
            status = (await report_after_now(tmp_path / "state"))["drivers"]["field"]
            assert gateway.terminate() == 0
    return collector.received.kept, status


async def test_a_poison_payload_is_skipped_and_the_messages_behind_it_arrive(
    rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    good = [(f"poison/d{i}", json.dumps({"n": i}).encode()) for i in range(10)]
    messages = [*good[:3], ("poison/bad", b"[" * 50_000), *good[3:]]
    driver = """\
    subscriptions:
      - topic: poison/+
        device: "poison/{device}"
"""
    readings, status = await _through_a_gateway(tmp_path, rabbitmq, mosquitto, driver, messages, 10)
    assert sorted(r["values"]["n"] for r in readings) == list(range(10))
    assert status["malformed"] == 1
    assert status["errors"] == 0  # no restart of the driver


async def test_a_shared_subscription_delivers_its_messages(
    rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """`$share/<group>/<filter>`: the broker sends the messages on their own topics, which
    must match the filter inside (they were all counted as malformed)."""
    driver = """\
    subscriptions:
      - topic: $share/gateways/shared/+/state
        device: "shared/{device}/state"
"""
    messages = [(f"shared/d{i}/state", json.dumps({"n": i}).encode()) for i in range(5)]
    readings, status = await _through_a_gateway(tmp_path, rabbitmq, mosquitto, driver, messages, 5)
    assert sorted(r["device"] for r in readings) == [f"d{i}" for i in range(5)]
    assert status["malformed"] == 0


async def test_a_message_matching_two_subscriptions_is_one_reading(
    rabbitmq: RabbitMQNode, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """A catch-all after a specific filter: an MQTT 5 broker sends a message once per matching
    subscription, so only the covering filter is subscribed, and the first subscription that
    matches decodes (each message became two readings)."""
    driver = """\
    subscriptions:
      - topic: overlap/+/state
        device: "overlap/{device}/state"
      - topic: overlap/#
"""
    messages = [(f"overlap/d{i}/state", json.dumps({"n": i}).encode()) for i in range(5)]
    messages.append(("overlap/hall/power", b'{"n": 5}'))
    readings, status = await _through_a_gateway(tmp_path, rabbitmq, mosquitto, driver, messages, 6)
    devices = sorted(r["device"] for r in readings)
    assert devices == [*(f"d{i}" for i in range(5)), "overlap/hall/power"]
    assert status["readings"] == 6
