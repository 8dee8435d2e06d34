"""The simulator's BLE encoders: they reproduce the published bytes, and decode back.

Golden sources as in test_ble_adverts.py: [bthome-ble] tests/test_parser_v2.py, [ruuvi]
the RAWv2 test vectors, [ble_monitor] test_atc_parser.py. The round trips run every
format through encode -> decode_advertisement and ask for the input back within the
format's resolution.
"""

from __future__ import annotations

import pytest
from edge_gateway_sim.ble_payloads import (
    BTHOME_IDS,
    atc,
    bthome_v2,
    malformed_bthome_truncated,
    malformed_bthome_unknown_object,
    malformed_ruuvi_truncated,
    pvvx,
    ruuvi_rawv2,
)
from hypothesis import given
from hypothesis import strategies as st

from drivers.ble import bthome, ruuvi, xiaomi
from drivers.ble.adverts import Advertisement, Measurement, decode_advertisement
from gateway.errors import DecodeError

SHELLY_ADDRESS = "54:48:E6:8F:80:A5"
SHELLY_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
TH = {"temperature": 25.06, "humidity": 50.55}
RUUVI_MAC = "CB:B8:33:4C:88:4F"
RUUVI_VALID = {
    "temperature": 24.3,
    "humidity": 53.49,
    "pressure": 1000.44,
    "acceleration_x": 0.0392266,
    "acceleration_y": -0.0392266,
    "acceleration_z": 10.1596894,
    "voltage": 2.977,
    "tx_power": 4,
    "movement_counter": 66,
}


def decode(
    key: str | int, payload: bytes, address: str = SHELLY_ADDRESS, bindkey: bytes | None = None
) -> Measurement:
    service = {key: payload} if isinstance(key, str) else {}
    maker = {key: payload} if isinstance(key, int) else {}
    measurement = decode_advertisement(Advertisement(address, None, None, service, maker), bindkey)
    assert measurement is not None
    return measurement


@pytest.mark.parametrize(
    ("encoded", "hex_payload"),
    [
        (bthome_v2(TH, None), "4002ca0903bf13"),  # [bthome-ble] test_bthome_temperature_humidity
        (  # [bthome-ble] test_bthome_packet_id_temperature_humidity_battery
            bthome_v2({"humidity": 63.27, "temperature": 23.97, "battery": 93}, 9),
            "400009015d025d0903b718",
        ),
        (  # [bthome-ble] test_bindkey_correct
            bthome_v2(TH, None, bindkey=SHELLY_KEY, address=SHELLY_ADDRESS, counter=0x33221100),
            "41a47266c95f730011223378237214",
        ),
        (  # [bthome.io/encryption] the spec's worked example
            bthome_v2(TH, None, bindkey=SHELLY_KEY, address=SHELLY_ADDRESS, counter=1122867),
            "41e445f3c9962b332211006c7c4519",
        ),
    ],
)
def test_bthome_encoder_reproduces_published_bytes(
    encoded: tuple[str, bytes], hex_payload: str
) -> None:
    assert encoded == (bthome.SERVICE_UUID, bytes.fromhex(hex_payload))


@pytest.mark.parametrize(
    ("values", "sequence", "mac", "hex_payload"),
    [  # [ruuvi] valid, maximum, minimum, invalid ("not available" everywhere)
        (RUUVI_VALID, 205, RUUVI_MAC, "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"),
        (
            {
                "temperature": 163.835,
                "humidity": 163.835,
                "pressure": 1155.34,
                "acceleration_x": 321.33450055,
                "acceleration_y": 321.33450055,
                "acceleration_z": 321.33450055,
                "voltage": 3.646,
                "tx_power": 20,
                "movement_counter": 254,
            },
            65534,
            RUUVI_MAC,
            "057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F",
        ),
        (
            {
                "temperature": -163.835,
                "humidity": 0,
                "pressure": 500,
                "acceleration_x": -321.33450055,
                "acceleration_y": -321.33450055,
                "acceleration_z": -321.33450055,
                "voltage": 1.6,
                "tx_power": -40,
                "movement_counter": 0,
            },
            0,
            RUUVI_MAC,
            "058001000000008001800180010000000000CBB8334C884F",
        ),
        ({}, None, "FF:FF:FF:FF:FF:FF", "058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF"),
    ],
)
def test_ruuvi_encoder_reproduces_published_bytes(
    values: dict[str, float], sequence: int | None, mac: str, hex_payload: str
) -> None:
    assert ruuvi_rawv2(values, sequence, mac=mac) == (ruuvi.COMPANY_ID, bytes.fromhex(hex_payload))


def test_xiaomi_encoders_reproduce_published_bytes() -> None:
    """[ble_monitor] test_atc_custom and test_atc_atc1441."""
    assert pvvx(
        {"temperature": 17.05, "humidity": 44.57, "battery": 88, "voltage": 2.998}
        | {"reed_switch": True, "trigger_controlled": True, "temperature_trigger": True},
        247,
        mac="A4:C1:38:02:83:F4",
    ) == (xiaomi.SERVICE_UUID, bytes.fromhex("f4830238c1a4a9066911b60b58f70d"))
    assert atc(
        {"temperature": 16.2, "humidity": 47, "battery": 95, "voltage": 3.064},
        25,
        mac="A4:C1:38:02:83:F4",
    ) == (xiaomi.SERVICE_UUID, bytes.fromhex("a4c1380283f400a22f5f0bf819"))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bthome_v2({"temperature": 400.0}, 1), "does not fit"),
        (lambda: bthome_v2({"colour": 1}, 1), "no number or binary object 'colour'"),
        (lambda: bthome_v2(TH, 1, bindkey=SHELLY_KEY), "needs the advertiser's address"),
        (lambda: ruuvi_rawv2({"temperature": 200.0}, 1), "does not fit"),
        (lambda: ruuvi_rawv2({"movement_counter": 255}, 1), "does not fit"),
        (lambda: ruuvi_rawv2({"voltage": 3.7}, 1), "does not fit"),
        (lambda: ruuvi_rawv2({"colour": 1}, 1), "has no"),
        (lambda: ruuvi_rawv2({}, 70000), "does not fit"),
        (lambda: pvvx({"temperature": 1, "humidity": 1, "battery": 1, "voltage": 99}, 1), "fit"),
    ],
)
def test_encoders_refuse_what_the_format_cannot_hold(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(
    "malformed",
    [
        malformed_bthome_truncated(3),
        malformed_bthome_unknown_object(3),
        malformed_ruuvi_truncated(),
    ],
)
def test_malformed_payloads_are_decode_errors(malformed: tuple[str | int, bytes]) -> None:
    with pytest.raises(DecodeError):
        decode(*malformed)


# Round trips: any value the format can hold comes back within half a step.


def _in_range(lo: int, hi: int, factor: float, offset: float = 0.0) -> st.SearchStrategy[float]:
    """Values whose nearest step lies in [lo, hi] (raw units)."""
    return st.floats((lo - 0.49) * factor + offset, (hi + 0.49) * factor + offset)


def _bthome_value(name: str) -> st.SearchStrategy[float | bool]:
    obj = bthome.OBJECTS[BTHOME_IDS[name]]
    if obj.kind == "binary":
        return st.booleans()
    bits = 8 * obj.length
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if obj.signed else (0, (1 << bits) - 1)
    return _in_range(lo, hi, obj.factor)


bthome_values = st.lists(st.sampled_from(sorted(BTHOME_IDS)), unique=True, max_size=6).flatmap(
    lambda names: st.fixed_dictionaries({n: _bthome_value(n) for n in names})
)
addresses = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02X}" for x in b))


def assert_close(
    decoded: Measurement, values: dict[str, float], resolution: dict[str, float]
) -> None:
    assert decoded.values.keys() == values.keys()
    for name, value in values.items():
        assert decoded.values[name] == pytest.approx(value, abs=resolution[name] / 2 + 1e-9)


@given(
    bthome_values,
    st.none() | st.integers(0, 255),
    st.none() | st.binary(min_size=16, max_size=16),
    addresses,
    st.integers(0, 2**32 - 1),
)
def test_bthome_round_trip(
    values: dict[str, float], packet_id: int | None, key: bytes | None, address: str, counter: int
) -> None:
    uuid, payload = bthome_v2(values, packet_id, bindkey=key, address=address, counter=counter)
    decoded = decode(uuid, payload, address, key)
    resolution = {name: bthome.OBJECTS[BTHOME_IDS[name]].factor for name in values}
    assert_close(decoded, values, resolution)
    expected_id = packet_id if packet_id is not None or key is None else counter
    assert decoded.packet_id == expected_id
    assert decoded.encryption_counter == (None if key is None else counter)


_RUUVI_RANGES = {  # raw ranges without the "not available" values
    **{f.name: (-32767, 32767) for f in ruuvi.FIELDS if f.not_available < 0},
    "humidity": (0, 65534),
    "pressure": (0, 65534),
    "voltage": (0, 2046),
    "tx_power": (0, 30),
    "movement_counter": (0, 254),
}
_RUUVI_FIELDS = {f.name: f for f in (*ruuvi.FIELDS, ruuvi.VOLTAGE, ruuvi.TX_POWER, ruuvi.MOVEMENT)}
ruuvi_values = st.fixed_dictionaries(
    {},
    optional={
        name: _in_range(*_RUUVI_RANGES[name], f.factor, f.offset)
        for name, f in _RUUVI_FIELDS.items()
    },
)


@given(ruuvi_values, st.none() | st.integers(0, 65534))
def test_ruuvi_round_trip(values: dict[str, float], sequence: int | None) -> None:
    decoded = decode(*ruuvi_rawv2(values, sequence))
    assert_close(decoded, values, {name: f.factor for name, f in _RUUVI_FIELDS.items()})
    assert decoded.packet_id == sequence


XIAOMI_RESOLUTION = {"temperature": 0.01, "humidity": 0.01, "battery": 1, "voltage": 0.001}
pvvx_values = st.fixed_dictionaries(
    {
        "temperature": _in_range(-32768, 32767, 0.01),
        "humidity": _in_range(0, 65535, 0.01),
        "battery": st.integers(0, 255),
        "voltage": _in_range(0, 65535, 0.001),
    }
)
atc_values = st.fixed_dictionaries(
    {
        "temperature": _in_range(-32768, 32767, 0.1),
        "humidity": st.integers(0, 255),
        "battery": st.integers(0, 255),
        "voltage": _in_range(0, 65535, 0.001),
    }
)


@given(
    pvvx_values,
    st.fixed_dictionaries({f: st.booleans() for f in xiaomi.PVVX_FLAGS}),
    st.integers(0, 255),
)
def test_pvvx_round_trip(values: dict[str, float], flags: dict[str, bool], counter: int) -> None:
    decoded = decode(*pvvx(values | flags, counter))
    assert decoded.format == "pvvx"
    assert {k: decoded.values[k] for k in flags} == flags
    assert_close(
        Measurement("pvvx", {k: decoded.values[k] for k in values}), values, XIAOMI_RESOLUTION
    )
    assert decoded.packet_id == counter


@given(atc_values, st.integers(0, 255))
def test_atc_round_trip(values: dict[str, float], counter: int) -> None:
    decoded = decode(*atc(values, counter))
    assert decoded.format == "atc"
    assert_close(decoded, values, XIAOMI_RESOLUTION | {"temperature": 0.1, "humidity": 1})
    assert decoded.packet_id == counter
