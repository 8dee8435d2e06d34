"""Xiaomi LYWSD03MMC (and kin) on custom firmware: service data of UUID 0x181A.

The firmware (https://github.com/pvvx/ATC_MiThermometer, "Bluetooth Advertising
Formats") sends one of two unencrypted layouts, told apart by length:

- pvvx "custom", 15 bytes, little-endian: MAC (reversed), temperature 0.01 °C (int16),
  humidity 0.01 % (uint16), battery mV (uint16), battery % (uint8), counter, flags.
- atc1441, 13 bytes, big-endian: MAC, temperature 0.1 °C (int16), humidity % (uint8),
  battery % (uint8), battery mV (uint16), counter.

The pvvx encrypted variants (8 and 11 bytes) need Xiaomi's key scheme and are refused.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from drivers.ble.measurement import Measurement, scaled
from gateway.errors import DecodeError
from gateway.model import Value

SERVICE_UUID = "0000181a-0000-1000-8000-00805f9b34fb"
PVVX = struct.Struct("<6shHHBBB")
ATC = struct.Struct(">6shBBHB")
UNITS = {"temperature": "Cel", "humidity": "%RH", "battery": "%", "voltage": "V"}

PVVX_FLAGS: Sequence[str] = (
    "reed_switch",
    "trigger_output",
    "trigger_controlled",
    "temperature_trigger",
    "humidity_trigger",
)
"""pvvx flag bits 0-4, each a boolean value: reed switch input, GPIO_TRG output level,
whether the output follows the trigger settings, temperature and humidity trigger events."""


def decode(payload: bytes) -> Measurement:
    """Decode 0x181A service data in pvvx or atc1441 layout (chosen by its length)."""
    values: dict[str, Value]
    if len(payload) == PVVX.size:
        _, temperature, humidity, millivolts, battery, counter, flags = PVVX.unpack(payload)
        values = {
            "temperature": scaled(temperature, 0.01),
            "humidity": scaled(humidity, 0.01),
            "battery": battery,
            "voltage": scaled(millivolts, 0.001),
        }
        values.update({name: bool(flags >> bit & 1) for bit, name in enumerate(PVVX_FLAGS)})
        fmt = "pvvx"
    elif len(payload) == ATC.size:
        _, temperature, humidity, battery, millivolts, counter = ATC.unpack(payload)
        values = {
            "temperature": scaled(temperature, 0.1),
            "humidity": humidity,
            "battery": battery,
            "voltage": scaled(millivolts, 0.001),
        }
        fmt = "atc"
    else:
        raise DecodeError(
            f"0x181A service data of {len(payload)} bytes is neither pvvx ({PVVX.size})"
            f" nor atc1441 ({ATC.size}); encrypted pvvx formats are not supported",
            payload,
        )
    return Measurement(fmt, values, dict(UNITS), counter)
