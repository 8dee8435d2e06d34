"""`edge-gateway-sim serial`: a scenario file run from the shell, its schedule played."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def test_a_scenario_runs_its_devices_on_ptys_plays_its_faults_and_reports_them(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        """\
seed: 7
devices:
  - {name: thermo, path: dev/thermo, model: json-sensor, options: {interval_s: 0.05}}
  - {name: gps, path: dev/gps, model: nmea-gps, plugged: false}
faults:
  - {at_s: 0.3, device: gps, fault: plug}
  - {at_s: 0.5, device: thermo, fault: noise, bytes: 64}
  - {at_s: 0.6, device: thermo, fault: unplug, duration_s: 0.5}
"""
    )
    sim = subprocess.Popen(
        [sys.executable, "-m", "edge_gateway_sim.cli", "serial", "--scenario", str(scenario),
         "--duration", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "dev" / "thermo").exists():
            assert time.monotonic() < deadline, "the symlink never appeared"
            time.sleep(0.05)
        target = os.readlink(tmp_path / "dev" / "thermo")
        assert target.startswith("/dev/pts/")
        out, err = sim.communicate(timeout=20)
    finally:
        sim.kill()
        sim.wait()
    assert sim.returncode == 0, err
    stats = json.loads(out)
    assert stats["thermo"]["unplugs"] == 1 and stats["thermo"]["noise_bytes"] == 64
    assert stats["thermo"]["sent"] > 10 and stats["gps"]["sent"] >= 1
    assert not (tmp_path / "dev" / "thermo").exists()  # removed when the simulator stops
    assert "thermo" in err.decode()


def test_a_wrong_scenario_is_exit_status_2_with_the_reason(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text("devices:\n  - {name: x, path: dev/x, model: toaster}\n")
    done = subprocess.run(
        [sys.executable, "-m", "edge_gateway_sim.cli", "serial", "--scenario", str(scenario)],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert b"unknown model 'toaster'" in done.stderr
