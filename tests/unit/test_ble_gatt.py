"""GATT characteristic formats: the SIG ones and the struct + scale escape hatch.

Formats from the Bluetooth SIG GATT Specification Supplement (GSS): Temperature 0x2A6E
sint16 0.01 °C (0x8000 "not known"), Temperature Celsius 0x2A1F sint16 0.1 °C, Humidity
0x2A6F uint16 0.01 % (0xFFFF "not known"), Pressure 0x2A6D uint32 0.1 Pa, Battery Level
0x2A19 uint8 %. The byte strings are what pvvx/ATC_MiThermometer serves (its README,
"Bluetooth Connection Mode") for the readings of the ble_monitor pvvx vector (17.05 °C,
44.57 %, 88 %).
"""

from __future__ import annotations

import math
import struct

import pytest
from edge_gateway_sim.ble_payloads import gatt_value
from hypothesis import given
from hypothesis import strategies as st

from drivers.ble.gatt_formats import SIG_FORMATS, CharacteristicFormat, sig_uuid
from gateway.errors import DecodeError


@pytest.mark.parametrize(
    ("short", "hex_value", "expected"),
    [
        (0x2A6E, "a906", 17.05),
        (0x2A6E, "57fe", -4.25),
        (0x2A1F, "aa00", 17.0),
        (0x2A6F, "6911", 44.57),
        (0x2A6D, "1a760f00", 1013.274),  # 10132740 * 0.1 Pa
        (0x2A19, "58", 88),
    ],
)
def test_sig_characteristics_decode(short: int, hex_value: str, expected: float) -> None:
    value = SIG_FORMATS[sig_uuid(short)].decode(bytes.fromhex(hex_value))
    assert value == expected
    assert type(value) is type(expected)


def test_sig_formats_name_values_like_the_advertisement_decoders() -> None:
    names = {uuid[4:8]: (f.name, f.unit) for uuid, f in SIG_FORMATS.items()}
    assert names["2a6e"] == names["2a1f"] == ("temperature", "Cel")
    assert names["2a6f"] == ("humidity", "%RH")
    assert names["2a6d"] == ("pressure", "hPa")
    assert names["2a19"] == ("battery", "%")


@pytest.mark.parametrize(
    ("short", "hex_value", "message"),
    [
        (0x2A6E, "0080", "not known"),
        (0x2A6F, "ffff", "not known"),
        (0x2A6E, "a9", "expected 2 bytes, got 1"),
        (0x2A19, "5800", "expected 1 bytes, got 2"),
        (0x2A6D, "", "expected 4 bytes, got 0"),
    ],
)
def test_sig_refusals_carry_the_bytes(short: int, hex_value: str, message: str) -> None:
    data = bytes.fromhex(hex_value)
    with pytest.raises(DecodeError, match=message) as caught:
        SIG_FORMATS[sig_uuid(short)].decode(data)
    assert caught.value.sample == data


def test_escape_hatch_scales_and_offsets() -> None:
    """A vendor characteristic: big-endian uint16 in tenths of a kelvin."""
    kelvin = CharacteristicFormat("temperature", "Cel", ">H", 0.1, -273.15)
    assert kelvin.decode(bytes.fromhex("0b8d")) == 22.55  # 2957 * 0.1 - 273.15
    assert CharacteristicFormat("count", "", "<I").decode(b"\x01\x00\x00\x00") == 1
    assert CharacteristicFormat("level", "", "<f").decode(struct.pack("<f", 0.5)) == 0.5


@pytest.mark.parametrize("raw", [math.nan, math.inf, -math.inf])
def test_escape_hatch_refuses_non_finite_floats(raw: float) -> None:
    with pytest.raises(DecodeError, match="not a finite number"):
        CharacteristicFormat("level", "", "<f").decode(struct.pack("<f", raw))


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("h", "byte order"),
        ("", "byte order"),
        ("<hh", "exactly one number"),
        ("<4s", "exactly one number"),
        ("<?", "exactly one number"),
        ("<y", "not a struct format"),
    ],
)
def test_unusable_structs_fail_at_construction(fmt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CharacteristicFormat("x", "", fmt)


@given(st.sampled_from(sorted(SIG_FORMATS)), st.binary(max_size=6))
def test_sig_decoders_raise_only_decode_error(uuid: str, data: bytes) -> None:
    try:
        value = SIG_FORMATS[uuid].decode(data)
    except DecodeError as exc:
        assert exc.sample == data
    else:
        assert isinstance(value, int | float) and math.isfinite(value)


@given(st.sampled_from(sorted(SIG_FORMATS)), st.data())
def test_sig_round_trip_within_resolution(uuid: str, data: st.DataObject) -> None:
    fmt = SIG_FORMATS[uuid]
    size = struct.calcsize(fmt.struct)
    signed = fmt.struct[-1].islower()
    low = -(1 << (8 * size - 1)) if signed else 0
    high = (1 << (8 * size - (1 if signed else 0))) - 1
    raw = data.draw(st.integers(low, high).filter(lambda r: r != fmt.not_known))
    value = raw * fmt.scale + fmt.offset
    decoded = fmt.decode(gatt_value(uuid, value))
    assert decoded == pytest.approx(value, abs=fmt.scale / 2)
