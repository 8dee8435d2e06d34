"""`edge-gateway-sim demo`: a whole simulated site here, shown by `edge-gateway tail`.

Private RabbitMQ and Mosquitto processes on free loopback ports, simulated MQTT
sensors, the real gateway as a child process, and the `tail` command a user
would type, until Ctrl-C. Everything it starts is stopped and its files removed, also
on SIGTERM or SIGHUP (`timeout`, a closed SSH session). Exit 0 when all went well.
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


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def run_demo(sensors: int, rate: float, duration: float | None, keep: bool) -> int:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
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
    except KeyboardInterrupt:  # while starting: what was started is stopped on the way out
        say("interrupted while starting")
        return 130
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
        tail_code = gateway_code = None
        try:
            _wait(tail, duration)
            tail_code = tail.poll()  # None: still running, as it should
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
                gateway_code = gateway.terminate()
                say(f"gateway exited with {gateway_code}")
            else:
                say(f"the gateway had stopped by itself; its log: {gateway.log}")
        say(f"sensors: {sent.summary()}")
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "status", "--config", str(config)], check=False
        )
    if tail_code:
        say(f"tail ended by itself with exit status {tail_code} (see its message above)")
    return 0 if gateway_code == 0 and not tail_code else 1


def _wait(process: subprocess.Popen[bytes], duration: float | None) -> None:
    deadline = None if duration is None else time.monotonic() + duration
    while process.poll() is None:
        if deadline is not None and time.monotonic() >= deadline:
            return
        time.sleep(0.2)


def say(text: str) -> None:
    print(f"[demo] {text}", file=sys.stderr, flush=True)
