"""Serial decoders: golden bytes for each line format and NMEA sentence, and fuzzing.

Every decoder takes bytes from a device and returns readings or raises its own
typed error (`DecodeError`, or `ChecksumError`, a kind of it); nothing else escapes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.framing import LineFramer, Overlong
from drivers.serial.lines import decode_line
from drivers.serial.lines_config import SerialLinesConfig
from drivers.serial.nmea import ChecksumError, decode_nmea
from gateway.errors import DecodeError

RECEIVED = datetime(1994, 3, 23, 12, 40, tzinfo=UTC).timestamp()
GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"


def lines_config(format: str, **options: Any) -> SerialLinesConfig:
    return SerialLinesConfig.model_validate(
        {"type": "serial", "name": "bench", "protocol": "lines", "port": "/dev/x",
         "format": format, **options}
    )  # fmt: skip


CONFIGS = {
    "json": lines_config("json", units={"temperature": "Cel"}, timestamp="ts", tags={"room": "a"}),
    "kv": lines_config("kv", units={"temp": "Cel", "hum": "%RH"}),
    "csv": lines_config(
        "csv", columns=[{"name": "temp", "unit": "Cel"}, {"name": ""}, {"name": "hum"}]
    ),
    "regex": lines_config(
        "regex", pattern=r"T=(?P<temp>[-.0-9]+)C H=(?P<hum>[.0-9]+)%", units={"temp": "Cel"}
    ),
}


# -- lines: golden ---------------------------------------------------------------------------


def test_a_json_line_becomes_one_reading_with_units_tags_and_its_own_time() -> None:
    line = b'{"temperature": 21.5, "ok": true, "label": "x", "ts": 764426400, "nested": {"a": 1}}'
    reading = decode_line(CONFIGS["json"], line, RECEIVED, "bench")
    assert reading.device == "bench"
    assert reading.values == {"temperature": 21.5, "ok": True, "label": "x"}
    assert reading.units == {"temperature": "Cel"}
    assert reading.tags == {"room": "a"}
    assert reading.ts == datetime(1994, 3, 23, 12, 40, tzinfo=UTC)


def test_a_kv_line_takes_equals_or_colon_and_numbers_become_numbers() -> None:
    reading = decode_line(CONFIGS["kv"], b"temp=21.5 hum:40, state=ok\r", RECEIVED, "bench")
    assert reading.values == {"temp": 21.5, "hum": 40, "state": "ok"}
    assert reading.units == {"temp": "Cel", "hum": "%RH"}
    assert reading.ts == datetime.fromtimestamp(RECEIVED, UTC)


def test_a_csv_line_names_values_by_column_and_skips_unnamed_columns() -> None:
    reading = decode_line(CONFIGS["csv"], b"21.5, 7 ,40.25", RECEIVED, "bench")
    assert reading.values == {"temp": 21.5, "hum": 40.25}
    assert reading.units == {"temp": "Cel"}


def test_a_regex_line_takes_the_named_groups() -> None:
    reading = decode_line(CONFIGS["regex"], b"T=-3.5C H=81%", RECEIVED, "bench")
    assert reading.values == {"temp": -3.5, "hum": 81}


def test_the_device_name_can_be_set() -> None:
    config = lines_config("kv", device="boiler")
    assert decode_line(config, b"t=1", RECEIVED, "bench").device == "boiler"


@pytest.mark.parametrize(
    ("format", "line", "problem"),
    [
        ("json", b"[1, 2]", "expected a JSON object"),
        ("json", b'{"t": 1', "not valid JSON"),
        ("json", b'{"t": NaN}', "finite"),
        ("json", b'{"a": null}', "no values"),
        ("json", b'{"t": 1, "ts": "yesterday"}', "timestamp"),
        ("kv", b"temp=21.5 garbage", "name=value"),
        ("kv", b"\xff\xfe=1", "not utf-8"),
        ("csv", b"1,2", "expected 3 columns, got 2"),
        ("regex", b"T=1C", "does not match"),
        ("kv", b"   ", "empty line"),
        # beyond a float's range: refused like JSON's 1e999 and NaN, not kept as the text
        ("kv", b"temp=1e999 hum=40", "'temp' is inf, not a finite number"),
        ("csv", b"-1e999,7,40", "'temp' is -inf, not a finite number"),
        ("json", b'{"temperature": 1e999}', "'temperature' is inf, not a finite number"),
    ],
)
def test_a_bad_line_is_a_decode_error_with_a_sample(format: str, line: bytes, problem: str) -> None:
    with pytest.raises(DecodeError, match=problem) as caught:
        decode_line(CONFIGS[format], line, RECEIVED, "bench")
    assert caught.value.sample == line[:64]


# -- NMEA: golden ----------------------------------------------------------------------------


def test_gga_gives_position_altitude_fix_quality_and_satellites_at_todays_time() -> None:
    reading = decode_nmea(GGA, RECEIVED, "gps", "gps-port")
    assert reading is not None
    assert reading.ts == datetime(1994, 3, 23, 12, 35, 19, tzinfo=UTC)
    assert reading.values == {
        "fix_quality": 1,
        "satellites": 8,
        "latitude": 48.1173,
        "longitude": 11.5166667,
        "hdop": 0.9,
        "altitude": 545.4,
    }
    assert reading.units == {"latitude": "deg", "longitude": "deg", "altitude": "m"}
    assert (reading.device, reading.source) == ("gps", "gps-port")


def test_rmc_gives_date_time_validity_speed_in_metres_per_second_and_course() -> None:
    reading = decode_nmea(RMC, RECEIVED, "gps", "gps-port")
    assert reading is not None
    assert reading.ts == datetime(1994, 3, 23, 12, 35, 19, tzinfo=UTC)
    assert reading.values == {
        "valid": True,
        "latitude": 48.1173,
        "longitude": 11.5166667,
        "speed": 11.524,
        "course": 84.4,
    }


def test_a_gga_just_before_midnight_received_just_after_belongs_to_the_day_before() -> None:
    after_midnight = datetime(1994, 3, 24, 0, 0, 5, tzinfo=UTC).timestamp()
    line = _sentence("GPGGA,235959,4807.038,S,01131.000,W,1,08,0.9,545.4,M,46.9,M,,")
    reading = decode_nmea(line, after_midnight, "gps", "p")
    assert reading is not None
    assert reading.ts == datetime(1994, 3, 23, 23, 59, 59, tzinfo=UTC)
    assert reading.values["latitude"] == -48.1173
    assert reading.values["longitude"] == -11.5166667


def test_a_receiver_without_a_fix_reports_quality_zero_and_no_position() -> None:
    line = _sentence("GPGGA,123519,,,,,0,00,,,M,,M,,")
    reading = decode_nmea(line, RECEIVED, "gps", "p")
    assert reading is not None
    assert reading.values == {"fix_quality": 0, "satellites": 0}


def test_a_flipped_digit_is_a_checksum_error() -> None:
    with pytest.raises(ChecksumError, match="expected"):
        decode_nmea(GGA.replace(b"545.4", b"545.5"), RECEIVED, "gps", "p")


def test_noise_before_a_sentence_on_the_same_line_costs_nothing() -> None:
    reading = decode_nmea(b"\x8f\xe3$G\x00" + RMC + b"\r", RECEIVED, "gps", "p")
    assert reading is not None and reading.values["valid"] is True


def test_sentences_not_asked_for_are_ignored_without_error() -> None:
    gsv = _sentence("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00")
    assert decode_nmea(gsv, RECEIVED, "gps", "p") is None
    assert decode_nmea(GGA, RECEIVED, "gps", "p", sentences=("RMC",)) is None


@pytest.mark.parametrize(
    "body",
    [
        "PUBX,00,081350.00,4717.113210,N,00833.915187,E,546.589,G3,2.1,2.0,0.007,77.52",  # u-blox
        "PGRME,15.0,M,45.0,M,25.0,M",  # Garmin
        "PGRMC,A,218.8,100,6378137.000,298.257223563,0.0,0.0,0.0,A,3,1,1,4,30",  # not RMC
        "PMTK001,314,3",  # MediaTek
    ],
)
def test_proprietary_sentences_are_ignored_without_error(body: str) -> None:
    assert decode_nmea(_sentence(body), RECEIVED, "gps", "p") is None


def test_encapsulated_sentences_are_ignored_without_error() -> None:
    ais = b"!AIVDM,1,1,,B,177KQJ5000G?tO`K>RA1wUbN0TKH,0*5C"
    assert decode_nmea(ais, RECEIVED, "gps", "p") is None
    with pytest.raises(ChecksumError):
        decode_nmea(ais.replace(b"*5C", b"*5D"), RECEIVED, "gps", "p")


@pytest.mark.parametrize(
    "body",
    [
        "GPGGA,123519,4807.038,N",  # too few fields
        "GPRMC,123519,X,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W",  # status
        "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,310294,003.1,W",  # 31 February
        "GPGGA,256199,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",  # 25 o'clock
        "GPGGA,123519,4867.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",  # 67 minutes
        "GPGGA,123519,4807.038,Q,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",  # hemisphere
        "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,inf,M,46.9,M,,",  # altitude
    ],
)
def test_a_sentence_with_a_good_checksum_but_bad_fields_is_a_decode_error(body: str) -> None:
    with pytest.raises(DecodeError):
        decode_nmea(_sentence(body), RECEIVED, "gps", "p")


def _sentence(body: str) -> bytes:
    checksum = 0
    for byte in body.encode():
        checksum ^= byte
    return f"${body}*{checksum:02X}".encode()


# -- framing -----------------------------------------------------------------------------------


def test_lines_split_across_reads_and_crlf_delimiters_are_put_together() -> None:
    framer = LineFramer(b"\r\n", max_bytes=16)
    assert framer.feed(b"a=1\r") == []
    assert framer.feed(b"\nb=2\r\nc=") == [b"a=1", b"b=2"]
    assert framer.feed(b"3\r\n") == [b"c=3"]


def test_an_overlong_line_is_reported_once_and_the_next_line_is_whole() -> None:
    framer = LineFramer(b"\n", max_bytes=8)
    out = framer.feed(b"x" * 20) + framer.feed(b"y" * 20) + framer.feed(b"z\nok=1\n")
    assert out == [Overlong(b"x" * 20), b"ok=1"]


def test_a_half_line_left_when_the_port_closes_is_handed_back() -> None:
    framer = LineFramer(b"\n", max_bytes=64)
    framer.feed(b"a=1\nb=")
    assert framer.reset() == b"b="
    assert framer.feed(b"c=3\n") == [b"c=3"]


@given(
    lines=st.lists(st.binary(max_size=12).filter(lambda b: b"\n" not in b), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=10),
)
def test_however_the_stream_is_cut_the_same_lines_come_out(
    lines: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    framer = LineFramer(b"\n", max_bytes=12)
    out: list[bytes | Overlong] = []
    start = 0
    for cut in [*sorted(c for c in cuts if c <= len(stream)), len(stream)]:
        out += framer.feed(stream[start:cut])
        start = cut
    assert out == lines


# -- fuzzing: nothing but the decoder's own error escapes -------------------------------------


@settings(max_examples=300)
@given(line=st.binary(max_size=120), format=st.sampled_from(sorted(CONFIGS)))
def test_any_bytes_in_a_line_format_give_a_reading_or_a_decode_error(
    line: bytes, format: str
) -> None:
    try:
        reading = decode_line(CONFIGS[format], line, RECEIVED, "bench")
    except DecodeError:
        return
    reading.to_json()  # what got through can be buffered


@settings(max_examples=300)
@given(text=st.text(max_size=80), format=st.sampled_from(sorted(CONFIGS)))
def test_any_text_in_a_line_format_gives_a_reading_or_a_decode_error(
    text: str, format: str
) -> None:
    try:
        reading = decode_line(CONFIGS[format], text.encode("utf-8", "surrogatepass"), RECEIVED, "b")
    except DecodeError:
        return
    reading.to_json()


_NMEA_FIELD = st.text(alphabet="0123456789.,-NSEWAVM", max_size=12)


@settings(max_examples=500)
@given(
    kind=st.sampled_from(["GPGGA", "GNRMC", "GPRMC", "GLGGA"]),
    fields=st.lists(_NMEA_FIELD, min_size=0, max_size=16),
    received=st.floats(min_value=0, max_value=4e9),
)
def test_any_sentence_with_a_valid_checksum_gives_a_reading_or_a_decode_error(
    kind: str, fields: list[str], received: float
) -> None:
    try:
        reading = decode_nmea(_sentence(",".join([kind, *fields])), received, "gps", "p")
    except DecodeError:
        return
    assert reading is not None
    reading.to_json()


_NMEA_BYTES = st.sampled_from([*b"0123456789.,-+eE_NSEWAVM ", *b"*$\x00\xff"])


@st.composite
def mutated_sentences(draw: st.DrawFn) -> bytes:
    """A golden GGA or RMC with bytes of its fields replaced, inserted or deleted, mostly
    with the checksum fixed up so that the damage reaches the field parsers."""
    body = bytearray(draw(st.sampled_from([GGA, RMC]))[1:-3])
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=len("GPGGA,"), max_value=len(body)))
        edit = draw(st.sampled_from(["replace", "insert", "delete"]))
        if edit == "insert" or at == len(body):
            body.insert(at, draw(_NMEA_BYTES))
        elif edit == "replace":
            body[at] = draw(_NMEA_BYTES)
        else:
            del body[at]
    fix_checksum = draw(st.sampled_from([True, True, True, False]))
    if fix_checksum and all(0x20 <= b < 0x7F for b in body):
        return _sentence(body.decode())
    return b"$" + bytes(body) + draw(st.sampled_from([GGA[-3:], RMC[-3:]]))


@settings(max_examples=500)
@given(line=mutated_sentences())
def test_a_damaged_sentence_gives_a_sound_reading_nothing_or_a_decode_error(line: bytes) -> None:
    try:
        reading = decode_nmea(line, RECEIVED, "gps", "p")
    except DecodeError:
        return
    assert reading is not None  # the sentence type is intact, and GGA and RMC are asked for
    assert reading.ts.utcoffset() == timedelta(0)
    assert reading.values
    for name, value in reading.values.items():
        assert type(value) is bool if name == "valid" else type(value) in (int, float), name
        assert math.isfinite(value), name
    assert -90 <= float(reading.values.get("latitude", 0)) <= 90
    assert -180 <= float(reading.values.get("longitude", 0)) <= 180
    assert set(reading.units) <= set(reading.values)
    reading.to_json()
