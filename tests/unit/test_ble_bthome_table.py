"""The BTHome v2 object table against every example of the spec's own tables.

Source: bthome.io "BLE advertising in the BTHome v2 format" (home-assistant/bthome.io,
src/format.html): the Example and Result columns of the sensor, binary sensor, event,
device information and packet id tables, each prefixed here with the device-information
byte 0x40 (v2, unencrypted). Precipitation (0x5F) is left out: the spec's example reads it
with factor 1, bthome-ble (what Home Assistant runs) with 0.1; we follow bthome-ble.
"""

from __future__ import annotations

import pytest

from drivers.ble import bthome
from drivers.ble.measurement import Measurement
from gateway.model import Value

ADDRESS = "A4:C1:38:8D:18:B2"
HELLO = "0C48656C6C6F20576F726C6421"  # length 12, "Hello World!"

SENSOR_EXAMPLES: list[tuple[str, str, Value, str]] = [
    ("518756", "acceleration", 22.151, "m/s2"),
    ("0161", "battery", 97, "%"),
    ("12E204", "co2", 1250, "ppm"),
    ("56E803", "conductivity", 1000, "uS/cm"),
    ("0960", "count", 96, ""),
    ("3D0960", "count", 24585, ""),
    ("3E2A2C0960", "count", 1611213866, ""),
    ("59EA", "count", -22, ""),
    ("5AEAEA", "count", -5398, ""),
    ("5BEA0234EA", "count", -365690134, ""),
    ("434E34", "current", 13.39, "A"),
    ("5D02EA", "current", -5.63, "A"),
    ("08CA06", "dew_point", 17.38, "Cel"),
    ("400C00", "distance", 12, "mm"),
    ("414E00", "distance", 7.8, "m"),
    ("424E3400", "duration", 13.39, "s"),
    ("4d12138a14", "energy", 344593.17, "kWh"),
    ("0A138A14", "energy", 1346.067, "kWh"),
    ("4B138A14", "gas", 1346.067, "m3"),
    ("4C41018A01", "gas", 25821.505, "m3"),
    ("528756", "gyroscope", 22.151, "deg/s"),
    ("03BF13", "humidity", 50.55, "%RH"),
    ("2E23", "humidity", 35, "%RH"),
    ("05138A14", "illuminance", 13460.67, "lx"),
    ("065E1F", "mass", 80.3, "kg"),
    ("073E1D", "mass", 74.86, "[lb_av]"),
    ("14020C", "moisture", 30.74, "%"),
    ("2F23", "moisture", 35, "%"),
    ("0D120C", "pm25", 3090, "ug/m3"),
    ("0E021C", "pm10", 7170, "ug/m3"),
    ("0B021B00", "power", 69.14, "W"),
    ("5C02FBFFFF", "power", -12.78, "W"),
    ("04138A01", "pressure", 1008.83, "hPa"),
    ("54" + HELLO, "raw", "48656c6c6f20576f726c6421", ""),
    ("3F020C", "rotation", 307.4, "deg"),
    ("444E34", "speed", 133.9, "m/s"),
    ("57EA", "temperature", -22, "Cel"),
    ("58EA", "temperature", -7.7, "Cel"),
    ("451101", "temperature", 27.3, "Cel"),
    ("02CA09", "temperature", 25.06, "Cel"),
    ("53" + HELLO, "text", "Hello World!", ""),
    ("505d396164", "timestamp", 1684093277, "s"),
    ("133301", "voc", 307, "ug/m3"),  # "tvoc" on the page
    ("0C020C", "voltage", 3.074, "V"),
    ("4A020C", "voltage", 307.4, "V"),
    ("4E87562A01", "volume", 19551.879, "L"),
    ("478756", "volume", 2215.1, "L"),
    ("48DC87", "volume", 34780, "mL"),
    ("5587562A01", "volume_storage", 19551.879, "L"),
    ("49DC87", "volume_flow_rate", 34.78, "m3/h"),
    ("4632", "uv_index", 5.0, ""),
    ("4F87562A01", "water", 19551.879, "L"),
    ("5E9F8C", "direction", 359.99, "deg"),
    # binary sensors: 1 is on, 0 is off
    ("1501", "battery_low", True, ""),
    ("1601", "battery_charging", True, ""),
    ("1700", "carbon_monoxide", False, ""),
    ("1801", "cold", True, ""),
    ("1900", "connectivity", False, ""),
    ("1A00", "door", False, ""),
    ("1B01", "garage_door", True, ""),
    ("1C01", "gas_detected", True, ""),
    ("0F01", "generic", True, ""),
    ("1D00", "heat", False, ""),
    ("1E01", "light", True, ""),
    ("1F01", "lock", True, ""),
    ("2001", "moisture_detected", True, ""),
    ("2100", "motion", False, ""),
    ("2201", "moving", True, ""),
    ("2301", "occupancy", True, ""),
    ("1100", "opening", False, ""),
    ("2400", "plug", False, ""),
    ("1001", "power_on", True, ""),
    ("2500", "presence", False, ""),
    ("2601", "problem", True, ""),
    ("2701", "running", True, ""),
    ("2800", "safety", False, ""),
    ("2901", "smoke", True, ""),
    ("2A00", "sound", False, ""),
    ("2B00", "tamper", False, ""),
    ("2C01", "vibration", True, ""),
    ("2D01", "window", True, ""),
    # events: a button's event name; a dimmer's steps, to the left negative
    ("3A00", "button", "none", ""),
    ("3A01", "button", "press", ""),
    ("3A02", "button", "double_press", ""),
    ("3A03", "button", "triple_press", ""),
    ("3A04", "button", "long_press", ""),
    ("3A05", "button", "long_double_press", ""),
    ("3A06", "button", "long_triple_press", ""),
    ("3A80", "button", "hold_press", ""),
    ("3C0000", "dimmer", 0, ""),
    ("3C0103", "dimmer", -3, ""),
    ("3C020A", "dimmer", 10, ""),
    # device information
    ("F00100", "device_type_id", 1, ""),
    ("F100010204", "firmware_version", "4.2.1.0", ""),
    ("F2000106", "firmware_version", "6.1.0", ""),
]


@pytest.mark.parametrize(
    ("example", "name", "value", "unit"), SENSOR_EXAMPLES, ids=[e[0] for e in SENSOR_EXAMPLES]
)
def test_spec_table_examples(example: str, name: str, value: Value, unit: str) -> None:
    measurement = bthome.decode(bytes.fromhex("40" + example), ADDRESS, None)
    assert measurement == Measurement("bthome", {name: value}, {name: unit} if unit else {}, None)
    assert type(measurement.values[name]) is type(value)


def test_spec_walkthrough_example() -> None:
    """The page's worked example: service data D2FC 40 02C409 03BF13."""
    measurement = bthome.decode(bytes.fromhex("4002C40903BF13"), ADDRESS, None)
    assert measurement.values == {"temperature": 25.0, "humidity": 50.55}


def test_spec_packet_id_example() -> None:
    assert bthome.decode(bytes.fromhex("400009"), ADDRESS, None).packet_id == 9


def test_spec_multiple_events_example() -> None:
    """3A003A01: no event for the first button, "press" for the second."""
    measurement = bthome.decode(bytes.fromhex("403A003A01"), ADDRESS, None)
    assert measurement.values == {"button": "none", "button_2": "press"}


def test_every_table_row_has_an_example_or_a_reason() -> None:
    """A new row in the table needs a spec example here (or a note why there is none)."""
    covered = {int(example[:2], 16) for example, *_ in SENSOR_EXAMPLES}
    without_spec_example = {
        bthome.PACKET_ID,  # tested above
        0x5F,  # precipitation: see the module docstring
        0x60,  # channel, 0x61 rotational speed, 0x62-0x64: newer rows, no example on the page
        0x61,
        0x62,
        0x63,
        0x64,
    }
    assert set(bthome.OBJECTS) - covered <= without_spec_example
