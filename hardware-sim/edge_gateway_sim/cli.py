"""`edge-gateway-sim`: drive simulated devices against a gateway from a shell or a benchmark.

Progress goes to stderr and the final summary is one JSON line on stdout, so scripts can parse
the result while a human watches the progress.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from paho.mqtt.enums import MQTTProtocolVersion

from edge_gateway_sim.mqtt_sensors import DEFAULT_PREFIX, FleetConfig, MqttSensorFleet

Handler = Callable[[argparse.Namespace], int]

_PROTOCOLS = {"3.1.1": MQTTProtocolVersion.MQTTv311, "5": MQTTProtocolVersion.MQTTv5}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-gateway-sim", description="Simulated devices for the edge gateway."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_mqtt(commands)
    _add_demo(commands)
    _add_ble(commands)
    _add_serial(commands)
    # More device kinds (serial, ble) register here: add a subparser and
    # `set_defaults(handler=...)` with a function taking the parsed args, returning an exit code.
    return parser


# -- demo -------------------------------------------------------------------------------------


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "demo",
        help="a whole simulated site: brokers, sensors, the gateway, and `edge-gateway tail`",
        description="Start private RabbitMQ and Mosquitto on loopback, simulated MQTT sensors "
        "and the gateway, and print readings as they arrive at RabbitMQ until Ctrl-C.",
    )
    p.add_argument("--sensors", type=int, default=5, help="number of devices (default 5)")
    p.add_argument("--rate", type=float, default=5.0, help="total readings/s (default 5)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from edge_gateway_sim.demo import run_demo  # brings in the broker tooling only when asked

    return run_demo(args.sensors, args.rate, args.duration, args.keep)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


# -- ble --------------------------------------------------------------------------------------


def _add_ble(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from edge_gateway_sim.bluez.fleet import KINDS

    p = commands.add_parser(
        "ble",
        help="a fake BlueZ on a private D-Bus with simulated BLE devices",
        description="Run dbus-daemon and a fake bluetoothd with simulated devices; print the "
        "environment for the gateway; run until Ctrl-C/SIGTERM or --duration. Never touches "
        "the real system bus.",
    )
    p.add_argument(
        "--devices",
        default=",".join(KINDS),
        help=f"comma-separated kinds out of {', '.join(KINDS)} (default: all)",
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.set_defaults(handler=_ble)


def _ble(args: argparse.Namespace) -> int:
    from edge_gateway_sim.bluez.fleet import KINDS, run_fleet

    kinds = [k.strip() for k in args.devices.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        print(f"edge-gateway-sim ble: unknown device kinds {unknown}", file=sys.stderr)
        return 2
    return run_fleet(kinds, args.duration)


# -- mqtt -------------------------------------------------------------------------------------


def _add_mqtt(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "mqtt",
        help="publish environmental sensor samples to an MQTT broker",
        description="Publish samples of N sensors round-robin at a total rate to "
        "<prefix>/sim-NNNN/state. Without --count or --duration, runs until Ctrl-C/SIGTERM.",
    )
    p.add_argument("--host", default="127.0.0.1", help="MQTT broker (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="MQTT broker port (default 1883)")
    p.add_argument("--sensors", type=int, default=10, help="number of devices (default 10)")
    p.add_argument(
        "--first-device",
        type=int,
        default=1,
        help="number of the first device (default 1 = sim-0001); lets several processes "
        "share a load with disjoint devices",
    )
    p.add_argument("--rate", type=float, default=10.0, help="total messages/s (default 10)")
    until = p.add_mutually_exclusive_group()
    until.add_argument("--count", type=int, help="stop after this many messages")
    until.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1, help="MQTT QoS (default 1)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix (default sensors)")
    p.add_argument(
        "--malformed-fraction",
        type=float,
        default=0.0,
        help="fraction of messages that are undecodable garbage (default 0)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed of the values (default 1)")
    p.add_argument(
        "--mqtt-version", choices=sorted(_PROTOCOLS), default="3.1.1", help="(default 3.1.1)"
    )
    p.add_argument("--client-id", default="", help="default: a unique generated id")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        help="seconds between progress lines on stderr; 0 for none (default 5)",
    )
    p.set_defaults(handler=_run_mqtt)


def _run_mqtt(args: argparse.Namespace) -> int:
    try:
        config = FleetConfig(
            host=args.host,
            port=args.port,
            sensors=args.sensors,
            first_device=args.first_device,
            rate=args.rate,
            qos=args.qos,
            prefix=args.prefix,
            malformed_fraction=args.malformed_fraction,
            seed=args.seed,
            protocol=_PROTOCOLS[args.mqtt_version],
            client_id=args.client_id,
        )
        fleet = MqttSensorFleet(config)
        fleet.start(count=args.count, duration=args.duration)
    except ValueError as exc:
        print(f"edge-gateway-sim mqtt: {exc}", file=sys.stderr)
        return 2

    interval: float | None = args.progress_interval if args.progress_interval > 0 else None
    with _stop_on_sigterm(fleet.request_stop):
        try:
            while True:
                try:
                    stats = fleet.wait(timeout=interval)
                    break
                except TimeoutError:
                    print(f"edge-gateway-sim mqtt: {fleet.stats().summary()}", file=sys.stderr)
                except KeyboardInterrupt:
                    fleet.request_stop()
        except ConnectionError as exc:
            print(f"edge-gateway-sim mqtt: {exc}", file=sys.stderr)
            return 1

    print(f"edge-gateway-sim mqtt: done: {stats.summary()}", file=sys.stderr)
    summary = asdict(stats) | {"rate": round(stats.rate, 1)}
    print(json.dumps(summary, separators=(",", ":")))
    if stats.acked != stats.published:
        print(
            f"edge-gateway-sim mqtt: only {stats.acked} of {stats.published} messages "
            "were acknowledged",
            file=sys.stderr,
        )
        return 1
    return 0


# -- serial -----------------------------------------------------------------------------------


def _add_serial(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "serial",
        help="serial devices on pseudo-terminals, behind the symlinks a scenario names",
        description="Run the devices of a scenario file (YAML or JSON; see "
        "edge_gateway_sim/serial_sim/scenario.py) on pseudo-terminals and play its faults. "
        "Point the gateway's `port` at the symlink paths. Runs until --duration, Ctrl-C or "
        "SIGTERM; prints what each device did as one JSON line.",
    )
    p.add_argument("--scenario", type=Path, required=True, help="the scenario file")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.set_defaults(handler=_run_serial)


def _run_serial(args: argparse.Namespace) -> int:
    from edge_gateway_sim.serial_sim.scenario import ScenarioError, load_scenario
    from edge_gateway_sim.serial_sim.sim import SerialSim

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with SerialSim(load_scenario(args.scenario)) as sim:
            for name, device in sim.devices.items():
                state = device.port.device or "unplugged"
                print(
                    f"edge-gateway-sim serial: {name}: {device.spec.path} -> {state}",
                    file=sys.stderr,
                )
            async with asyncio.TaskGroup() as tasks:
                faults = tasks.create_task(sim.run_faults())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.duration)
                faults.cancel()
            return sim.stats()

    try:
        stats = asyncio.run(run())
    except ScenarioError as exc:
        print(f"edge-gateway-sim serial: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(stats, separators=(",", ":")))
    return 0


@contextmanager
def _stop_on_sigterm(stop: Callable[[], None]) -> Iterator[None]:
    """Turn SIGTERM into a graceful stop while the run lasts (benchmark harnesses terminate us)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
