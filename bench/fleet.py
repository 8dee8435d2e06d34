"""A simulated sensor fleet in a process of its own (so it does not share a GIL with the
consumer): `python -m bench.fleet --port P --rate R --duration S ...`; prints its final
FleetStats as one JSON line."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import asdict

from edge_gateway_sim.mqtt_sensors import FleetConfig, MqttSensorFleet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="messages/s over all sensors")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--sensors", type=int, default=10)
    parser.add_argument("--first-device", type=int, default=1)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--max-inflight", type=int, default=1000)
    args = parser.parse_args(argv)
    fleet = MqttSensorFleet(
        FleetConfig(
            port=args.port,
            rate=args.rate,
            qos=args.qos,
            sensors=args.sensors,
            first_device=args.first_device,
            prefix=args.prefix,
            max_inflight=args.max_inflight,
            drain_timeout=10.0,
        )
    )
    signal.signal(signal.SIGTERM, lambda *_: fleet.request_stop())
    stats = fleet.run(duration=args.duration)
    out = asdict(stats)
    out.pop("last_seq")
    out["rate"] = stats.rate
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
