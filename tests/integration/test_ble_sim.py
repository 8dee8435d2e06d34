"""`edge-gateway-sim ble` from a shell: its fake BlueZ serves bleak; it cleans up after itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest

RUUVI = "C7:11:22:33:44:55"


async def test_the_ble_simulator_serves_bleak_and_stops_its_dbus_daemon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    command = ["-m", "edge_gateway_sim.cli", "ble", "--devices", "ruuvi", "--duration", "120"]
    sim = await asyncio.create_subprocess_exec(
        sys.executable, *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert sim.stderr is not None and sim.stdout is not None
        banner = b"".join([await sim.stderr.readline() for _ in range(2)]).decode()
        match = re.search(r"DBUS_SYSTEM_BUS_ADDRESS=(\S+) PATH=(\S+):\$PATH", banner)
        assert match, banner
        address, stub_dir = match.groups()
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        monkeypatch.setenv("PATH", f"{stub_dir}{os.pathsep}{os.environ['PATH']}")
        from bleak import BleakScanner

        found = await BleakScanner.find_device_by_address(RUUVI, timeout=20)
        assert found is not None and found.name == "Ruuvi 0001"
        sim.terminate()  # SIGTERM: a graceful stop, with the summary on stdout
        out, _ = await asyncio.wait_for(sim.communicate(), 20)
    finally:
        if sim.returncode is None:
            sim.kill()
            await sim.wait()
    assert sim.returncode == 0
    assert json.loads(out)[RUUVI]["adverts"] >= 1
    socket = Path(address.removeprefix("unix:path="))
    assert not socket.parent.exists()  # the bus folder is gone: dbus-daemon was stopped
