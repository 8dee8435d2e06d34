"""Every advertisement decoder keeps its contract on any input: a Measurement, None, or a
DecodeError whose sample is the offending payload, and nothing else.

Inputs are random bytes and valid payloads from the simulator's encoders, cut short or
with one byte changed, so the fuzzing reaches past the first length check. Hypothesis
prints the seed of a failure (and `--hypothesis-seed` pins one).
"""

from __future__ import annotations

import math

from edge_gateway_sim.ble_payloads import atc, bthome_v2, pvvx, ruuvi_rawv2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.ble import bthome, ruuvi, xiaomi
from drivers.ble.adverts import Advertisement, Measurement, decode_advertisement
from gateway.errors import DecodeError

ADDRESS = "54:48:E6:8F:80:A5"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
FORMATS = {"bthome", "ruuvi", "pvvx", "atc"}

fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_valid = [
    bthome_v2({"temperature": 21.5, "humidity": 40.0, "battery": 90, "motion": True}, 7),
    bthome_v2({"temperature": 21.5, "pressure": 1013.25}, 8, bindkey=KEY, address=ADDRESS),
    ruuvi_rawv2({"temperature": 21.5, "humidity": 40.0, "voltage": 3.0}, 12),
    pvvx({"temperature": 21.5, "humidity": 40.0, "battery": 90, "voltage": 3.0}, 3),
    atc({"temperature": 21.5, "humidity": 40, "battery": 90, "voltage": 3.0}, 3),
]


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str | int, bytes]:
    """A valid payload cut short, extended, or with one byte replaced."""
    key, payload = draw(st.sampled_from(_valid))
    how = draw(st.sampled_from(["cut", "extend", "replace"]))
    if how == "cut":
        return key, payload[: draw(st.integers(0, len(payload) - 1))]
    if how == "extend":
        return key, payload + draw(st.binary(min_size=1, max_size=8))
    i = draw(st.integers(0, len(payload) - 1))
    return key, payload[:i] + bytes([draw(st.integers(0, 255))]) + payload[i + 1 :]


random_payloads = st.one_of(
    st.tuples(
        st.just(bthome.SERVICE_UUID),
        st.builds(
            lambda b, rest: bytes([b]) + rest, st.integers(0x40, 0x47), st.binary(max_size=30)
        )
        | st.binary(max_size=30),
    ),
    st.tuples(
        st.just(ruuvi.COMPANY_ID),
        st.builds(lambda rest: b"\x05" + rest, st.binary(min_size=20, max_size=26))
        | st.binary(max_size=30),
    ),
    st.tuples(
        st.just(xiaomi.SERVICE_UUID),
        st.binary(min_size=xiaomi.ATC.size, max_size=xiaomi.ATC.size)
        | st.binary(min_size=xiaomi.PVVX.size, max_size=xiaomi.PVVX.size)
        | st.binary(max_size=20),
    ),
)


def assert_contract(key: str | int, payload: bytes, bindkey: bytes | None) -> None:
    service = {key: payload} if isinstance(key, str) else {}
    maker = {key: payload} if isinstance(key, int) else {}
    advert = Advertisement(ADDRESS, None, None, service, maker)
    try:
        measurement = decode_advertisement(advert, bindkey)
    except DecodeError as exc:
        assert exc.sample == payload[:64]
        assert str(exc)
        return
    assert isinstance(measurement, Measurement)
    assert measurement.format in FORMATS
    assert set(measurement.units) <= set(measurement.values)
    for name, value in measurement.values.items():
        assert isinstance(name, str) and name
        assert isinstance(value, bool | int | float | str)
        assert not isinstance(value, float) or math.isfinite(value)
    assert measurement.packet_id is None or measurement.packet_id >= 0


@fuzz
@given(random_payloads | damaged(), st.sampled_from([None, KEY]))
def test_decoders_raise_only_decode_error(
    keyed: tuple[str | int, bytes], bindkey: bytes | None
) -> None:
    assert_contract(*keyed, bindkey)
