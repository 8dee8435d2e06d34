"""MQTT payload decoders, topic matching and device templates.

Golden tests compare whole `Reading`s (frozen, equal by value) to the decoder's output;
the hypothesis tests hold every decoder to its contract: a list of readings, or a
`DecodeError`, and nothing else, with readings that always encode to valid JSON.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.mqtt.config import FieldSpec, Subscription
from drivers.mqtt.decode import DECODERS, decode, decode_json, decode_number, decode_senml
from drivers.mqtt.topics import DeviceTemplate, covers, overlaps, topic_matches
from gateway.errors import DecodeError
from gateway.model import Reading

RECEIVED = 1_700_000_000.0  # 2023-11-14T22:13:20Z, the broker-side arrival time
RECEIVED_DT = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
SOURCE = "mqtt-test"


def sub(**kwargs: object) -> Subscription:
    return Subscription(topic="sensors/+/state", **kwargs)  # type: ignore[arg-type]


# --- decode_json -------------------------------------------------------------------


def test_json_takes_every_top_level_scalar_by_default() -> None:
    payload = (
        b'{"temp": 21.5, "rh": 40, "ok": true, "mode": "eco", "nested": {"a": 1}, "l": [1], '
        b'"n": null}'
    )
    assert decode_json(sub(), "kitchen", payload, RECEIVED, SOURCE) == [
        Reading(
            device="kitchen",
            ts=RECEIVED_DT,
            values={"temp": 21.5, "rh": 40, "ok": True, "mode": "eco"},
            source=SOURCE,
        )
    ]


def test_json_default_values_take_units_and_tags_from_the_subscription() -> None:
    s = sub(units={"temp": "Cel"}, tags={"room": "kitchen"})
    [reading] = decode_json(s, "k1", b'{"temp": 21.5, "rh": 40}', RECEIVED, SOURCE)
    assert reading.units == {"temp": "Cel"}
    assert reading.tags == {"room": "kitchen"}


def test_json_fields_pick_dotted_paths_rename_and_attach_units() -> None:
    s = sub(
        fields={
            "temperature": FieldSpec(path="env.temp", unit="Cel"),
            "humidity": "env.rh",
            "battery": "bat",
        },
        units={"humidity": "%RH"},
    )
    payload = b'{"env": {"temp": 19.25, "rh": 55}, "bat": 3.1, "ignored": 7}'
    assert decode_json(s, "hall", payload, RECEIVED, SOURCE) == [
        Reading(
            device="hall",
            ts=RECEIVED_DT,
            values={"temperature": 19.25, "humidity": 55, "battery": 3.1},
            source=SOURCE,
            units={"temperature": "Cel", "humidity": "%RH"},
        )
    ]


def test_json_fields_missing_from_the_payload_are_left_out() -> None:
    s = sub(fields={"t": "env.temp", "p": "env.pressure"})
    [reading] = decode_json(s, "d", b'{"env": {"temp": 1}}', RECEIVED, SOURCE)
    assert reading.values == {"t": 1}


def test_json_field_holding_an_object_is_a_decode_error() -> None:
    s = sub(fields={"t": "env"})
    with pytest.raises(DecodeError, match="'env' is not a number"):
        decode_json(s, "d", b'{"env": {"temp": 1}}', RECEIVED, SOURCE)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1700000100", datetime(2023, 11, 14, 22, 15, 0, tzinfo=UTC)),
        ("1700000100.25", datetime(2023, 11, 14, 22, 15, 0, 250_000, tzinfo=UTC)),
        ("1700000100123", datetime(2023, 11, 14, 22, 15, 0, 123_000, tzinfo=UTC)),
        ('"2024-05-06T07:08:09Z"', datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ('"2024-05-06T07:08:09.5Z"', datetime(2024, 5, 6, 7, 8, 9, 500_000, tzinfo=UTC)),
        ('"2024-05-06T09:08:09+02:00"', datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ('"2024-05-06t07:08:09z"', datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
    ],
    ids=[
        "epoch-s",
        "epoch-s-fraction",
        "epoch-ms",
        "rfc3339-z",
        "rfc3339-fraction",
        "offset",
        "rfc3339-lower-case",
    ],
)
def test_json_timestamp_field_sets_the_reading_time(raw: str, expected: datetime) -> None:
    payload = f'{{"ts": {raw}, "temp": 20}}'.encode()
    [reading] = decode_json(sub(timestamp="ts"), "d", payload, RECEIVED, SOURCE)
    assert reading.ts == expected
    assert reading.values == {"temp": 20}  # the timestamp is not a value


def test_json_nested_timestamp_path() -> None:
    payload = b'{"meta": {"at": 1700000100}, "temp": 20}'
    [reading] = decode_json(sub(timestamp="meta.at"), "d", payload, RECEIVED, SOURCE)
    assert reading.ts == datetime(2023, 11, 14, 22, 15, 0, tzinfo=UTC)


def test_json_without_the_timestamp_field_uses_the_arrival_time() -> None:
    [reading] = decode_json(sub(timestamp="ts"), "d", b'{"temp": 20}', RECEIVED, SOURCE)
    assert reading.ts == RECEIVED_DT


def test_json_naive_rfc3339_timestamp_is_rejected() -> None:
    payload = b'{"ts": "2024-05-06T07:08:09", "temp": 20}'
    with pytest.raises(DecodeError, match="no time zone"):
        decode_json(sub(timestamp="ts"), "d", payload, RECEIVED, SOURCE)


@pytest.mark.parametrize("raw", ['"yesterday"', "-5", "true", "[1]", "99999999999999999"], ids=str)
def test_json_unusable_timestamp_is_rejected(raw: str) -> None:
    payload = f'{{"ts": {raw}, "temp": 20}}'.encode()
    with pytest.raises(DecodeError, match="timestamp"):
        decode_json(sub(timestamp="ts"), "d", payload, RECEIVED, SOURCE)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"\xff\x00\x65\x00\x01", r"not valid JSON: not UTF-8 text \(byte 4\)$"),  # not utf-16
        (b'{"a": \xff}', r"not valid JSON: not UTF-8 text \(byte 6\)$"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b"42", "expected a JSON object, got int"),
        (b"{}", "no values"),
        (b'{"a": null, "b": {}}', "no values"),
        (b'{"a": NaN}', "not a finite number"),
        (b'{"a": Infinity}', "not a finite number"),
        (b'{"a": 1e999}', "not a finite number"),
    ],
)
def test_json_bad_payloads_raise_decode_error(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message) as info:
        decode_json(sub(), "d", payload, RECEIVED, SOURCE)
    assert info.value.sample == payload[:64]


def test_decode_error_keeps_only_the_first_64_bytes_as_sample() -> None:
    payload = b"x" * 1000
    with pytest.raises(DecodeError) as info:
        decode_json(sub(), "d", payload, RECEIVED, SOURCE)
    assert info.value.sample == b"x" * 64


def test_json_offset_timestamp_is_stored_in_utc() -> None:
    """model.Reading: `ts` is timezone-aware UTC, whatever offset the device sent."""
    payload = b'{"ts": "2024-05-06T09:08:09+02:00", "temp": 20}'
    [reading] = decode_json(sub(timestamp="ts"), "d", payload, RECEIVED, SOURCE)
    assert reading.ts.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("fmt", "payload", "message"),
    [
        # before year 1 in UTC
        ("json", b'{"ts": "0001-01-01T00:00:00+01:00", "temp": 20}', "timestamp 'ts' is out of"),
        # after 9999 in UTC
        ("json", b'{"ts": "9999-12-31T23:59:59-01:00", "temp": 20}', "timestamp 'ts' is out of"),
        # too large for a float
        ("json", b'{"ts": 1' + b"0" * 400 + b', "temp": 20}', "timestamp 'ts' is out of range"),
        ("senml", b'[{"n":"a","v":1,"t":1e20}]', r"SenML time bt \+ t is 1e\+20 s, out of range"),
        ("senml", b'[{"n":"a","v":1,"t":-1e20}]', r"SenML time bt \+ t is -1e\+20 s"),
        ("senml", b'[{"n":"a","v":1,"t":1e12}]', "SenML time"),  # year 33658
        ("senml", b'[{"n":"a","v":1' + b"0" * 400 + b"}]", "SenML v must be a finite number"),
        ("senml", b'[{"bt":1' + b"0" * 400 + b',"n":"a","v":1}]', "SenML bt must be a finite"),
        ("senml", b'[{"bt":1e308,"n":"a","v":1,"t":1e308}]', "SenML time bt"),  # sum: inf
    ],
    ids=[
        "ts-year-0",
        "ts-year-10000",
        "ts-huge-int",
        "t-1e20",
        "t-minus-1e20",
        "t-1e12",
        "v-huge-int",
        "bt-huge-int",
        "bt-plus-t-overflows",
    ],
)
def test_values_out_of_range_are_a_decode_error_naming_the_field(
    fmt: str, payload: bytes, message: str
) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(sub(format=fmt, timestamp="ts"), "d", payload, RECEIVED, SOURCE)


@pytest.mark.parametrize(
    ("fmt", "payload"),
    [
        ("json", b'{"x": "\\ud800"}'),
        ("json", b'{"\\udc00": 1}'),
        ("senml", b'[{"n": "x", "vs": "\\ud800"}]'),
        ("senml", b'[{"n": "\\ud800", "v": 1}]'),
        ("senml", b'[{"bn": "\\ud800/", "n": "x", "v": 1}]'),
    ],
)
def test_lone_surrogates_are_a_decode_error(fmt: str, payload: bytes) -> None:
    """JSON can escape a lone surrogate; no UTF-8 message can carry it."""
    with pytest.raises(DecodeError, match="surrogate"):
        decode(sub(format=fmt), "d", payload, RECEIVED, SOURCE)


# --- decode_number -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"21", 21),
        (b"-3", -3),
        (b"21.5", 21.5),
        (b"1e3", 1000.0),
        (b"  42\n", 42),
        (b"\t-0.25\r\n", -0.25),
    ],
)
def test_number_payloads(payload: bytes, expected: float) -> None:
    s = sub(format="number", value="temperature", unit="Cel", tags={"k": "v"})
    [reading] = decode_number(s, "probe", payload, RECEIVED, SOURCE)
    assert reading == Reading(
        device="probe",
        ts=RECEIVED_DT,
        values={"temperature": expected},
        source=SOURCE,
        units={"temperature": "Cel"},
        tags={"k": "v"},
    )
    assert type(reading.values["temperature"]) is type(expected)


def test_number_without_unit_has_no_units() -> None:
    [reading] = decode_number(sub(format="number"), "p", b"7", RECEIVED, SOURCE)
    assert reading.values == {"value": 7}
    assert reading.units == {}


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"   ",
        b"abc",
        b"12abc",
        b"1,5",
        b"0x10",
        b"\xff",
        b"nan",
        b"inf",
        b"-Infinity",
        b"1e999",
    ],
)
def test_number_garbage_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_number(sub(format="number"), "p", payload, RECEIVED, SOURCE)


# --- decode_senml ------------------------------------------------------------------------

BT = 1.276020076001e09  # RFC 8428's base time: 2010-06-08T18:01:16.001Z


def at(seconds_after_bt: int) -> datetime:
    return datetime(2010, 6, 8, 18, 1, 16, 1000, tzinfo=UTC) + timedelta(seconds=seconds_after_bt)


def test_senml_rfc8428_5_1_1_single_datapoint() -> None:
    payload = b'[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]'
    assert decode_senml(sub(format="senml"), "topic-dev", payload, RECEIVED, SOURCE) == [
        Reading(
            device="topic-dev",  # no bn: the topic names the device, n names the value
            ts=RECEIVED_DT,
            values={"urn:dev:ow:10e2073a01080063": 23.1},
            source=SOURCE,
            units={"urn:dev:ow:10e2073a01080063": "Cel"},
        )
    ]


def test_senml_rfc8428_5_1_2_multiple_datapoints_base_name_names_the_device() -> None:
    payload = (
        b'[{"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},'
        b'{"n":"current","u":"A","v":1.2}]'
    )
    assert decode_senml(sub(format="senml"), "topic-dev", payload, RECEIVED, SOURCE) == [
        Reading(
            device="urn:dev:ow:10e2073a01080063",
            ts=RECEIVED_DT,
            values={"voltage": 120.1, "current": 1.2},
            source=SOURCE,
            units={"voltage": "V", "current": "A"},
        )
    ]


RFC8428_MULTIPLE_MEASUREMENTS = b"""[
  {"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,
   "bu":"A","bver":5,
   "n":"voltage","u":"V","v":120.1},
  {"n":"current","t":-5,"v":1.2},
  {"n":"current","t":-4,"v":1.3},
  {"n":"current","t":-3,"v":1.4},
  {"n":"current","t":-2,"v":1.5},
  {"n":"current","t":-1,"v":1.6},
  {"n":"current","v":1.7}
]"""


def test_senml_rfc8428_5_1_2_base_time_base_unit_one_reading_per_instant() -> None:
    dev = "urn:dev:ow:10e2073a0108006"
    readings = decode_senml(
        sub(format="senml"), "topic-dev", RFC8428_MULTIPLE_MEASUREMENTS, RECEIVED, SOURCE
    )
    assert readings == [
        Reading(
            dev, at(0), {"voltage": 120.1, "current": 1.7}, SOURCE, {"voltage": "V", "current": "A"}
        ),
        Reading(dev, at(-5), {"current": 1.2}, SOURCE, {"current": "A"}),
        Reading(dev, at(-4), {"current": 1.3}, SOURCE, {"current": "A"}),
        Reading(dev, at(-3), {"current": 1.4}, SOURCE, {"current": "A"}),
        Reading(dev, at(-2), {"current": 1.5}, SOURCE, {"current": "A"}),
        Reading(dev, at(-1), {"current": 1.6}, SOURCE, {"current": "A"}),
    ]


def test_senml_with_device_template_topic_names_device_and_full_name_names_value() -> None:
    s = sub(format="senml", device="sensors/{device}/state")
    readings = decode_senml(s, "meter-7", RFC8428_MULTIPLE_MEASUREMENTS, RECEIVED, SOURCE)
    assert readings[0] == Reading(
        "meter-7",
        at(0),
        {"urn:dev:ow:10e2073a0108006:voltage": 120.1, "urn:dev:ow:10e2073a0108006:current": 1.7},
        SOURCE,
        {"urn:dev:ow:10e2073a0108006:voltage": "V", "urn:dev:ow:10e2073a0108006:current": "A"},
    )
    assert [r.device for r in readings] == ["meter-7"] * 6


def test_senml_small_times_are_relative_to_arrival() -> None:
    """RFC 8428 4.5.3: times below 2**28 are relative to now (here: the arrival time)."""
    payload = b'[{"n":"temp","v":20,"t":-10},{"n":"temp","v":21},{"n":"temp","v":22,"t":5}]'
    readings = decode_senml(sub(format="senml"), "d", payload, RECEIVED, SOURCE)
    assert [(r.ts, r.values) for r in readings] == [
        (RECEIVED_DT - timedelta(seconds=10), {"temp": 20}),
        (RECEIVED_DT, {"temp": 21}),
        (RECEIVED_DT + timedelta(seconds=5), {"temp": 22}),
    ]


def test_senml_relative_base_time_plus_time() -> None:
    payload = b'[{"bn":"d1/","bt":-60,"n":"a","v":1,"t":30}]'
    [reading] = decode_senml(sub(format="senml"), "t", payload, RECEIVED, SOURCE)
    assert reading.device == "d1"
    assert reading.ts == RECEIVED_DT - timedelta(seconds=30)


def test_senml_string_boolean_sum_and_base_value() -> None:
    payload = (
        b'[{"bn":"dev:","bv":100,"n":"level","v":5},'
        b'{"n":"mode","vs":"eco"},{"n":"door","vb":false},{"n":"energy","s":12.5,"u":"Wh"},'
        b'{"n":"meta"}]'
    )
    assert decode_senml(sub(format="senml"), "t", payload, RECEIVED, SOURCE) == [
        Reading(
            "dev",
            RECEIVED_DT,
            {"level": 105.0, "mode": "eco", "door": False, "energy": 12.5},
            SOURCE,
            {"energy": "Wh"},
        )
    ]


def test_senml_a_name_repeated_at_the_same_time_is_a_reading_of_its_own() -> None:
    """Two samples of one name at one instant (no `t`: both "now") are both kept, in order;
    a pack must not lose a value to a later record of the same name."""
    payload = (
        b'[{"bn":"dev:","n":"temp","u":"Cel","v":20.5},{"n":"hum","v":40},'
        b'{"n":"temp","u":"Cel","v":20.7},{"n":"temp","v":20.9,"t":5}]'
    )
    assert decode_senml(sub(format="senml"), "t", payload, RECEIVED, SOURCE) == [
        Reading("dev", RECEIVED_DT, {"temp": 20.5, "hum": 40}, SOURCE, {"temp": "Cel"}),
        Reading("dev", RECEIVED_DT, {"temp": 20.7}, SOURCE, {"temp": "Cel"}),
        Reading("dev", RECEIVED_DT + timedelta(seconds=5), {"temp": 20.9}, SOURCE, {}),
    ]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{}", "non-empty JSON array"),
        (b"[]", "non-empty JSON array"),
        (b"[1]", "not a JSON object"),
        (b'[{"n":"a"}]', "holds no values"),
        (b'[{"v":1}]', "no name"),
        (b'[{"n":"a","v":"1"}]', "v must be a finite number"),
        (b'[{"n":"a","v":true}]', "v must be a finite number"),
        (b'[{"n":"a","vb":1}]', "vb must be true or false"),
        (b'[{"n":"a","vs":1}]', "vs must be a string"),
        (b'[{"n":1,"v":1}]', "n must be a string"),
        (b'[{"bn":1,"n":"a","v":1}]', "bn must be a string"),
        (b'[{"n":"a","v":1,"t":"x"}]', "t must be a finite number"),
        (b'[{"bt":NaN,"n":"a","v":1}]', "bt must be a finite number"),
        (b'[{"n":"a","v":1e308,"bv":1e308}]', "not a finite number"),
        # a data value: refused, not dropped (a reading cannot carry bytes)
        (b'[{"n":"a","v":1},{"n":"blob","vd":"aGk"}]', "SenML vd .* not supported"),
        (b'[{"n":"a","vd":"aGk","v":1}]', "SenML vd .* not supported"),
        # must-understand fields (RFC 8428 section 4.4): this decoder knows none
        (b'[{"n":"a","v":1,"rollover_":true}]', "SenML field 'rollover_' must be understood"),
        (b'[{"bn":"d:","bver_":11},{"n":"a","v":1}]', "SenML field 'bver_' must be understood"),
    ],
)
def test_senml_bad_packs_raise_decode_error(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_senml(sub(format="senml"), "d", payload, RECEIVED, SOURCE)


def test_decode_dispatches_on_the_subscription_format() -> None:
    assert set(DECODERS) == {"json", "number", "senml"}
    [reading] = decode(sub(format="number"), "d", b"3", RECEIVED, SOURCE)
    assert reading.values == {"value": 3}


# --- topics ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("sport/tennis/player1", "sport/tennis/player1", True),
        ("sport/tennis/player1", "sport/tennis/player2", False),
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("#", "any/thing/at/all", True),
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/tournament", False),
        ("sport/tennis/+", "sport/tennis", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("+/tennis/#", "sport/tennis/player1", True),
        ("sensors/+/state", "sensors/kitchen/state", True),
        ("sensors/+/state", "sensors/kitchen/attr", False),
        ("Sensors/+", "sensors/x", False),
        # MQTT 4.7.2: topics starting with $ only match filters that start with $
        ("#", "$SYS/broker/uptime", False),
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("$SYS/broker/+", "$SYS/broker/uptime", True),
        # a shared subscription's messages come on their own topics
        ("$share/gateways/sensors/+/state", "sensors/kitchen/state", True),
        ("$share/gateways/sensors/+/state", "sensors/kitchen/attr", False),
        ("$share/gateways/#", "$SYS/broker/uptime", False),
    ],
)
def test_topic_matches_like_the_broker(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches


@pytest.mark.parametrize(
    ("template", "topic", "device"),
    [
        ("sensors/{device}/state", "sensors/kitchen/state", "kitchen"),
        ("{_}/{device}/{_}", "site-a/boiler/temp", "boiler"),
        ("{device}", "thermo-1", "thermo-1"),
        (None, "sensors/kitchen/state", "sensors/kitchen/state"),
    ],
)
def test_device_template_names_the_device(template: str | None, topic: str, device: str) -> None:
    assert DeviceTemplate(template).device(topic) == device


@pytest.mark.parametrize(
    ("template", "topic", "message"),
    [
        ("sensors/{device}/state", "sensors/kitchen", "does not fit"),
        ("sensors/{device}/state", "sensors/kitchen/state/x", "does not fit"),
        ("sensors/{device}/state", "other/kitchen/state", "does not fit"),
        ("sensors/{device}/state", "sensors//state", "empty device level"),
    ],
)
def test_device_template_rejects_topics_that_do_not_fit(
    template: str, topic: str, message: str
) -> None:
    with pytest.raises(DecodeError, match=message):
        DeviceTemplate(template).device(topic)


# --- the decoders' contract, fuzzed ------------------------------------------------------
#
# `decode()` is the entry point the MQTT source calls; its contract is "readings, or
# DecodeError". Numbers are unbounded (huge integers, out-of-range times, NaN) and text may
# hold lone surrogates, the inputs that broke that contract before.

SUBSCRIPTIONS = [
    sub(),
    sub(timestamp="ts"),
    sub(fields={"a": "a", "b": FieldSpec(path="x.b", unit="V")}, timestamp="x.ts"),
    sub(format="number"),
    sub(format="senml"),
    sub(format="senml", device="sensors/{device}/state"),
]

_any_text = st.text(st.characters(blacklist_categories=()), max_size=8)  # surrogates too
_ints = st.integers() | st.integers(-(10**400), 10**400)
_scalars = st.none() | st.booleans() | _ints | st.floats() | _any_text
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["a", "b", "x", "ts", "v", "n"]) | st.text(max_size=3),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
_times = st.floats(min_value=-1e9, max_value=4e9) | st.integers(-(10**9), 4 * 10**9) | st.floats()
_numbers = st.floats() | _ints  # NaN and infinities included: decoders must refuse them
_names = st.text(max_size=6) | _any_text
_units = st.sampled_from(["Cel", "%RH", "V", ""]) | st.text(max_size=3)
SENML_KEYS = ["bn", "bt", "bu", "bv", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t"]

well_typed_records = st.builds(
    lambda base, value: {**base, **value},
    st.fixed_dictionaries(
        {},
        optional={
            "bn": _names,
            "bt": _times,
            "bu": _units,
            "bv": st.floats(-1e300, 1e300) | _ints,
            "n": _names,
            "u": _units,
            "t": _times,
        },
    ),
    st.one_of(
        st.fixed_dictionaries({"v": _numbers}),
        st.fixed_dictionaries({"vs": _any_text}),
        st.fixed_dictionaries({"vb": st.booleans()}),
        st.fixed_dictionaries({"s": _numbers}),
        st.just({}),
    ),
)
any_records = st.dictionaries(st.sampled_from(SENML_KEYS), json_values, max_size=5)
senml_packs = st.lists(well_typed_records, min_size=1, max_size=5) | st.lists(
    well_typed_records | any_records | json_values, max_size=5
)
json_objects = st.fixed_dictionaries(
    {},
    optional={
        "a": _scalars,
        "b": _scalars | json_values,
        "ts": _times | st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01T00:00:00", "x"]),
        "x": st.fixed_dictionaries({}, optional={"b": _scalars, "ts": _times}) | json_values,
    },
)


def _no_constants(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


def assert_decoder_contract(subscription: Subscription, payload: bytes) -> None:
    try:
        readings = decode(subscription, "dev", payload, RECEIVED, SOURCE)
    except DecodeError:
        return
    assert isinstance(readings, list)
    for reading in readings:
        assert isinstance(reading, Reading)
        assert reading.ts.utcoffset() == timedelta(0)
        doc = json.loads(reading.to_json(), parse_constant=_no_constants)
        assert doc["device"] == reading.device
        assert doc["values"] and set(doc["values"]) == set(reading.values)


fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(subscription=st.sampled_from(SUBSCRIPTIONS), payload=st.binary(max_size=64))
def test_any_bytes_give_readings_or_decode_error(
    subscription: Subscription, payload: bytes
) -> None:
    assert_decoder_contract(subscription, payload)


@fuzz
@given(subscription=st.sampled_from(SUBSCRIPTIONS), value=json_values | json_objects)
def test_any_json_value_gives_readings_or_decode_error(
    subscription: Subscription, value: object
) -> None:
    assert_decoder_contract(subscription, json.dumps(value).encode())


@fuzz
@given(
    subscription=st.sampled_from(SUBSCRIPTIONS[-2:]),
    pack=senml_packs,
)
def test_any_senml_shaped_pack_gives_readings_or_decode_error(
    subscription: Subscription, pack: list[object]
) -> None:
    assert_decoder_contract(subscription, json.dumps(pack).encode())


@fuzz
@given(
    subscription=st.sampled_from(SUBSCRIPTIONS[:3]),
    doc=json_objects,
)
def test_any_json_object_gives_readings_or_decode_error(
    subscription: Subscription, doc: dict[str, object]
) -> None:
    assert_decoder_contract(subscription, json.dumps(doc).encode())


@fuzz
@given(
    number=st.integers(-(10**30), 10**30) | st.floats(allow_nan=True, allow_infinity=True),
    pad=st.sampled_from(["", " ", "\n", "\t "]),
)
def test_any_number_text_gives_its_value_or_decode_error(number: float, pad: str) -> None:
    payload = f"{pad}{number!r}{pad}".encode()
    if isinstance(number, float) and not math.isfinite(number):
        with pytest.raises(DecodeError):
            decode_number(sub(format="number"), "d", payload, RECEIVED, SOURCE)
    else:
        [reading] = decode_number(sub(format="number"), "d", payload, RECEIVED, SOURCE)
        assert reading.values == {"value": number}
        assert type(reading.values["value"]) is type(number)


def test_deeply_nested_json_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="nested too deeply"):
        decode(Subscription(topic="t"), "d", b"[" * 100_000, 0.0, "src")


def test_a_senml_unit_with_a_lone_surrogate_is_a_decode_error() -> None:
    pack = b'[{"n":"t","v":1,"u":"\\ud800"}]'
    with pytest.raises(DecodeError, match="surrogate"):
        decode(Subscription(topic="t", format="senml"), "d", pack, 0.0, "src")


def test_senml_fields_unknown_but_not_must_understand_are_ignored() -> None:
    """RFC 8428 section 4.4: only names ending in _ must be understood."""
    payload = b'[{"n":"a","v":1,"note":"x","note_x":0}]'
    [reading] = decode_senml(sub(format="senml"), "d", payload, RECEIVED, SOURCE)
    assert reading.values == {"a": 1.0}


@pytest.mark.parametrize(
    ("outer", "inner", "covered", "overlapping"),
    [
        ("s/#", "s/+/state", True, True),
        ("s/+/state", "s/#", False, True),
        ("s/#", "s", True, True),  # '#' matches the parent level too
        ("a/+", "a", False, False),
        ("a/+", "a/#", False, True),
        ("a/+/x", "a/b/+", False, True),  # a/b/x matches both; neither covers the other
        ("a/b", "a/b", True, True),
        ("a/b", "a/c", False, False),
        ("#", "$SYS/broker/uptime", False, False),  # wildcards do not match $ topics
        ("$SYS/#", "$SYS/broker/uptime", True, True),
        ("$share/g/s/#", "$share/g/s/x", True, True),
        ("$share/g/s/#", "s/x", False, True),  # two subscriptions: the broker sends both
        ("/+", "/a", True, True),
    ],
)
def test_covering_and_overlapping_filters(
    outer: str, inner: str, covered: bool, overlapping: bool
) -> None:
    assert covers(outer, inner) is covered
    assert overlaps(outer, inner) is overlapping
    assert overlaps(inner, outer) is overlapping
