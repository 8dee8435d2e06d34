"""`edge-gateway-sim demo`: a whole simulated site here, shown by `edge-gateway tail`.

Private RabbitMQ and Mosquitto processes on free loopback ports, simulated MQTT
sensors, the real gateway as a child process, and the `tail` command a user
would type, until Ctrl-C. Everything it starts is stopped and its files removed.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge_gateway_sim.brokers import MosquittoBroker, RabbitMQNode
from edge_gateway_sim.gateway_process import GatewayProcess, site_config
from edge_gateway_sim.mqtt_sensors import FleetConfig, MqttSensorFleet

EXCHANGE = "edge-gateway"


def run_demo(sensors: int, rate: float, duration: float | None, keep: bool) -> int:
    base = Path(tempfile.mkdtemp(prefix="edge-gateway-demo-"))
    say(f"working directory: {base}")
    try:
        with (
            RabbitMQNode(base / "rabbitmq", "demo") as rabbit,
            MosquittoBroker(base / "mosquitto") as mosquitto,
        ):
            say(f"RabbitMQ  {rabbit.url}")
            say(f"Mosquitto mqtt://127.0.0.1:{mosquitto.port}")
            config = base / "gateway.yaml"
            config.write_text(
                site_config(
                    state_dir=base / "state",
                    amqp_url=rabbit.url,
                    mqtt_port=mosquitto.port,
                    exchange=EXCHANGE,
                    gateway_id="demo-gateway",
                    site="demo-site",
                )
            )
            return _run_site(base, config, rabbit.url, mosquitto.port, sensors, rate, duration)
    finally:
        if keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _run_site(
    base: Path,
    config: Path,
    amqp_url: str,
    mqtt_port: int,
    sensors: int,
    rate: float,
    duration: float | None,
) -> int:
    with GatewayProcess(config, base / "gateway.log") as gateway:
        gateway.start()
        say(f"gateway   pid {gateway.pid}, config {config}, log {gateway.log}")
        fleet = MqttSensorFleet(FleetConfig(port=mqtt_port, sensors=sensors, rate=rate))
        fleet.start(duration=None)
        tail_command = ["edge-gateway", "tail", "--url", amqp_url, "--exchange", EXCHANGE]
        say(f"{sensors} simulated sensors publish {rate:g} readings/s in total")
        say("readings arriving at RabbitMQ (" + " ".join(tail_command) + "), Ctrl-C to stop:")
        tail = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *tail_command[1:]],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # we stop it ourselves, after Ctrl-C
        )
        try:
            _wait(tail, duration)
        except KeyboardInterrupt:
            print(file=sys.stderr)
        finally:
            say("stopping: sensors, tail, gateway, brokers")
            sent = fleet.stop(timeout=30)
            tail.send_signal(signal.SIGINT)
            try:
                tail.wait(10)
            except subprocess.TimeoutExpired:
                tail.kill()
            if gateway.running:
                code = gateway.terminate()
                say(f"gateway exited with {code}")
        say(f"sensors: {sent.summary()}")
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "status", "--config", str(config)], check=False
        )
    return 0


def _wait(process: subprocess.Popen[bytes], duration: float | None) -> None:
    deadline = None if duration is None else time.monotonic() + duration
    while process.poll() is None:
        if deadline is not None and time.monotonic() >= deadline:
            return
        time.sleep(0.2)


def say(text: str) -> None:
    print(f"[demo] {text}", file=sys.stderr, flush=True)
