"""The README's first command: `edge-gateway-sim demo` shows readings arriving, then cleans up."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path


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


def test_demo_stopped_by_sigterm_stops_everything_it_started_and_removes_its_files() -> None:
    """As `timeout` or a closed SSH session would stop it."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge_gateway_sim.cli", "demo", "--rate", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()  # blocks until a reading arrives through the site
        assert first.startswith("{"), first
        demo.send_signal(signal.SIGTERM)
        _, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 0, err
    assert "gateway exited with 0" in err
    [base] = re.findall(r"working directory: (\S+)", err)
    assert not Path(base).exists()
    left = subprocess.run(["pgrep", "-f", base], capture_output=True, text=True, check=False)
    assert left.stdout == "", f"still running: {left.stdout}"
