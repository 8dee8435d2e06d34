"""Simulated BLE devices: what each one advertises, and the GATT profile of connectable ones.

Values are a pure function of the packet number, so a test can tell which packets
arrived: `temperature` of packet n is `20 + (n % 100) / 10` for every advertising kind.
Payloads come from `ble_payloads`, the inverse of the gateway's decoders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edge_gateway_sim import ble_payloads

Payload = tuple[dict[str, bytes], dict[int, bytes]]
"""(service data by 128-bit UUID, manufacturer data by company id)."""

ENVIRONMENTAL_SENSING = "0000181a-0000-1000-8000-00805f9b34fb"
BATTERY_SERVICE = "0000180f-0000-1000-8000-00805f9b34fb"
TEMPERATURE = "00002a6e-0000-1000-8000-00805f9b34fb"
HUMIDITY = "00002a6f-0000-1000-8000-00805f9b34fb"
BATTERY_LEVEL = "00002a19-0000-1000-8000-00805f9b34fb"


def temperature(n: int) -> float:
    return 20 + (n % 100) / 10


@dataclass(frozen=True)
class GattProfile:
    """Services -> characteristics of a connectable device; values by notification number."""

    services: dict[str, dict[str, Callable[[int], bytes]]]
    notify: frozenset[str] = frozenset()
    notify_interval_s: float = 0.5

    def value(self, uuid: str, n: int) -> bytes:
        for characteristics in self.services.values():
            if uuid in characteristics:
                return characteristics[uuid](n)
        raise KeyError(f"no characteristic {uuid}")


@dataclass
class SimDevice:
    """One simulated device and its faults (`in_range`, `refuses`), which tests flip."""

    address: str
    name: str | None
    kind: str
    payload: Callable[[int], Payload]
    interval_s: float = 0.5
    rssi: int = -60
    gatt: GattProfile | None = None
    in_range: bool = True
    refuses: bool = False
    quiet_when_connected: bool = False
    """Stops advertising while a central is connected, as most GATT peripherals do."""
    sent: int = field(default=0)


def bthome(address: str, name: str = "bthome-sim", bindkey: bytes | None = None) -> SimDevice:
    def payload(n: int) -> Payload:
        values = {"temperature": temperature(n), "humidity": 40 + n % 20, "battery": 90}
        uuid, data = ble_payloads.bthome_v2(
            values, n % 256, bindkey=bindkey, address=address, counter=n
        )
        return {uuid: data}, {}

    return SimDevice(address, name, "bthome-encrypted" if bindkey else "bthome", payload)


def ruuvi(address: str, name: str = "Ruuvi 0001") -> SimDevice:
    def payload(n: int) -> Payload:
        values = {"temperature": temperature(n), "humidity": 45.5, "pressure": 1013.25}
        company, data = ble_payloads.ruuvi_rawv2(values, n % 65535, mac=address)
        return {}, {company: data}

    return SimDevice(address, name, "ruuvi", payload)


def pvvx(address: str, name: str = "ATC_000001") -> SimDevice:
    def payload(n: int) -> Payload:
        values = {"temperature": temperature(n), "humidity": 50.0, "battery": 80, "voltage": 2.95}
        uuid, data = ble_payloads.pvvx(values, n % 256, mac=address)
        return {uuid: data}, {}

    return SimDevice(address, name, "pvvx", payload)


def malformed(address: str, name: str = "broken-sim") -> SimDevice:
    """Every other packet is broken (truncated or an unknown object); the rest are good."""

    def payload(n: int) -> Payload:
        if n % 2:
            uuid, data = ble_payloads.bthome_v2({"temperature": temperature(n)}, n % 256)
        elif n % 4:
            uuid, data = ble_payloads.malformed_bthome_truncated(n % 256)
        else:
            uuid, data = ble_payloads.malformed_bthome_unknown_object(n % 256)
        return {uuid: data}, {}

    return SimDevice(address, name, "malformed", payload)


def environmental(address: str, name: str = "env-sim") -> SimDevice:
    """A connectable Environmental Sensing device: temperature notifies, humidity and battery
    are read. It advertises its service UUIDs only, no data for a decoder."""
    profile = GattProfile(
        services={
            ENVIRONMENTAL_SENSING: {
                TEMPERATURE: lambda n: ble_payloads.gatt_value(TEMPERATURE, temperature(n)),
                HUMIDITY: lambda n: ble_payloads.gatt_value(HUMIDITY, 55.5),
            },
            BATTERY_SERVICE: {BATTERY_LEVEL: lambda n: ble_payloads.gatt_value(BATTERY_LEVEL, 77)},
        },
        notify=frozenset({TEMPERATURE}),
    )
    return SimDevice(
        address,
        name,
        "environmental",
        lambda n: ({}, {}),
        gatt=profile,
    )
