"""Ruuvi data format 5 (RAWv2), manufacturer data of company 0x0499.

Spec: https://docs.ruuvi.com/communication/bluetooth-advertisements/data-format-5-rawv2
Every field is big-endian; a field at its "not available" value (the largest unsigned,
the smallest signed) is left out of the measurement. Acceleration comes in milli-g and is
given in m/s2, the unit BTHome uses for it, so one name means one unit across sensors.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.ble.measurement import Measurement, scaled
from gateway.errors import DecodeError
from gateway.model import Value

COMPANY_ID = 0x0499
DATA_FORMAT = 5
LAYOUT = struct.Struct(">BhHHhhhHBH6s")  # format, fields below, power info split, MAC
STANDARD_GRAVITY = 9.80665  # m/s2 per g


@dataclass(frozen=True, slots=True)
class Field:
    """A field of the layout: value = raw * factor + offset, absent at `not_available`."""

    name: str
    unit: str
    not_available: int
    factor: float = 1.0
    offset: float = 0.0


_ACCELERATION_FACTOR = STANDARD_GRAVITY / 1000  # milli-g -> m/s2
FIELDS: Sequence[Field] = (
    Field("temperature", "Cel", -0x8000, 0.005),
    Field("humidity", "%RH", 0xFFFF, 0.0025),
    Field("pressure", "hPa", 0xFFFF, 0.01, 500.0),
    Field("acceleration_x", "m/s2", -0x8000, _ACCELERATION_FACTOR),
    Field("acceleration_y", "m/s2", -0x8000, _ACCELERATION_FACTOR),
    Field("acceleration_z", "m/s2", -0x8000, _ACCELERATION_FACTOR),
)
"""The layout's fields between the format byte and the power info, in order."""
VOLTAGE = Field("voltage", "V", 0x7FF, 0.001, 1.6)  # top 11 bits of the power info
TX_POWER = Field("tx_power", "dBm", 0x1F, 2, -40)  # low 5 bits of the power info
MOVEMENT = Field("movement_counter", "", 0xFF)
SEQUENCE_NOT_AVAILABLE = 0xFFFF


def decode(payload: bytes) -> Measurement:
    """Decode RAWv2 manufacturer data (the company id already stripped, as bleak does)."""
    if not payload:
        raise DecodeError("Ruuvi manufacturer data is empty", payload)
    if payload[0] != DATA_FORMAT:
        raise DecodeError(
            f"Ruuvi data format {payload[0]} is not supported: set the tag to RAWv2 (5)", payload
        )
    if len(payload) != LAYOUT.size:
        raise DecodeError(
            f"Ruuvi RAWv2 is {LAYOUT.size} bytes, this one is {len(payload)}", payload
        )
    _, *raw_fields, power, movement, sequence, _mac = LAYOUT.unpack(payload)
    raws = [*zip(FIELDS, raw_fields, strict=True)]
    raws += [(VOLTAGE, power >> 5), (TX_POWER, power & 0x1F), (MOVEMENT, movement)]
    values: dict[str, Value] = {}
    units: dict[str, str] = {}
    for field, raw in raws:
        if raw != field.not_available:
            values[field.name] = scaled(raw, field.factor, field.offset)
            if field.unit:
                units[field.name] = field.unit
    packet_id = None if sequence == SEQUENCE_NOT_AVAILABLE else sequence
    return Measurement("ruuvi", values, units, packet_id)
