"""The README's first command: `edge-gateway-sim demo` shows readings arriving, then cleans up."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_prints_readings_from_rabbitmq_and_stops_cleanly() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edge_gateway_sim.cli", "demo", "--duration", "6", "--rate", "10"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    readings = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(readings) >= 30  # 6 s at 10/s, less start-up
    assert {r["device"] for r in readings} == {f"sim-000{i}" for i in range(1, 6)}
    assert all(r["units"]["temperature"] == "Cel" for r in readings)
    assert "gateway exited with 0" in done.stderr
    assert "driver     sim-sensors (mqtt)" in done.stdout
