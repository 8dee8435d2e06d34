"""`edge-gateway-sim ble`: a fake BlueZ with a fleet of simulated devices, until Ctrl-C.

A gateway started with the printed environment (DBUS_SYSTEM_BUS_ADDRESS and PATH with the
bluetoothctl stub) scans and connects to them as if they were real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable

from edge_gateway_sim.bluez import devices
from edge_gateway_sim.bluez.bus import PrivateBus
from edge_gateway_sim.bluez.devices import SimDevice
from edge_gateway_sim.bluez.fake import FakeBlueZ

DEMO_BINDKEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")

KINDS: dict[str, Callable[[], SimDevice]] = {
    "bthome": lambda: devices.bthome("A4:C1:38:00:00:01"),
    "encrypted": lambda: devices.bthome("A4:C1:38:00:00:02", "bthome-enc", DEMO_BINDKEY),
    "ruuvi": lambda: devices.ruuvi("C7:11:22:33:44:55"),
    "pvvx": lambda: devices.pvvx("A4:C1:38:00:00:03"),
    "env": lambda: devices.environmental("EE:00:00:00:00:01"),
    "malformed": lambda: devices.malformed("A4:C1:38:00:00:04"),
}


def run_fleet(kinds: list[str], duration: float | None) -> int:
    fleet = [KINDS[kind]() for kind in kinds]
    with PrivateBus() as bus:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(bus, fleet, duration))
    summary = {d.address: {"kind": d.kind, "adverts": d.sent} for d in fleet}
    print(json.dumps(summary, separators=(",", ":")))
    return 0


async def _serve(bus: PrivateBus, fleet: list[SimDevice], duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with FakeBlueZ(bus.address, fleet):
        # Only now, with org.bluez on the bus: a client started on seeing this finds it.
        print(
            "edge-gateway-sim ble: fake BlueZ running; start the gateway with\n"
            f"  export DBUS_SYSTEM_BUS_ADDRESS={bus.address} PATH={bus.bin}:$PATH\n"
            f"  devices: {', '.join(f'{d.kind} {d.address}' for d in fleet)}\n"
            f"  encrypted BTHome bind key: {DEMO_BINDKEY.hex()}",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()
