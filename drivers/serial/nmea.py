"""NMEA 0183 decoder: GGA and RMC sentences to readings, checksums verified.

A sentence is `$<talker><type>,<fields>*<checksum>`; the checksum is the XOR of
every byte between `$` and `*`. A table (`SENTENCES`) maps a sentence type to
its parser, so adding VTG or GSA is one function and one row. Written here
rather than with pynmea2: two sentences are a few dozen lines, and a pure
function raising only `DecodeError` is easier to fuzz than a library's
exception tree. No I/O, no logging.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta

from gateway.errors import DecodeError
from gateway.model import Reading, Value, utc_from_epoch

KNOT_M_S = 1852 / 3600


class ChecksumError(DecodeError):
    """A well-formed sentence whose checksum does not match: a line error, counted apart."""


_SENTENCE = re.compile(rb"[$!]([A-Z][A-Z0-9]{1,14}),([\x20-\x7e]*)\*([0-9A-Fa-f]{2})")
"""Any sentence with a checksum: approved (`$GPGGA`: talker and type), proprietary (`$P`
and a maker's code: `$PUBX`, `$PGRME`, `$PMTK001`) and encapsulated (`!AIVDM`)."""
_TIME = re.compile(r"(\d\d)(\d\d)(\d\d)(\.\d+)?")
UNITS = {
    "latitude": "deg",
    "longitude": "deg",
    "altitude": "m",
    "speed": "m/s",
    "course": "deg",
}


def decode_nmea(
    line: bytes,
    received: float,
    device: str,
    source: str,
    sentences: Collection[str] = ("GGA", "RMC"),
    tags: Mapping[str, str] | None = None,
) -> Reading | None:
    """One sentence (without CR LF) to a reading; None for a valid sentence not asked for."""
    # noise before a sentence (no line end in between) costs nothing
    start = max(line.rfind(b"$"), line.rfind(b"!"))
    match = _SENTENCE.fullmatch(line[max(start, 0) :].strip())
    if match is None:
        raise DecodeError("not an NMEA 0183 sentence ($TTSSS,...*HH)", line)
    address, body, checksum = match.groups()
    expected = 0
    for byte in address + b"," + body:
        expected ^= byte
    if expected != int(checksum, 16):
        raise ChecksumError(f"bad NMEA checksum {checksum.decode()}, expected {expected:02X}", line)
    if len(address) != 5 or address.startswith(b"P"):  # only approved sentences are read
        return None
    kind = address[2:].decode()
    if kind not in sentences or kind not in SENTENCES:
        return None
    fields = body.decode("ascii").split(",")
    ts, values = SENTENCES[kind](fields, received, line)
    return Reading(
        device=device,
        ts=ts,
        values=values,
        source=source,
        units={name: unit for name, unit in UNITS.items() if name in values},
        tags=tags or {},
    )


def _gga(fields: list[str], received: float, line: bytes) -> tuple[datetime, dict[str, Value]]:
    """Fix data: time, position, fix quality, satellites, HDOP, altitude."""
    if len(fields) < 14:
        raise DecodeError(f"GGA has {len(fields)} fields, expected at least 14", line)
    values: dict[str, Value] = {
        "fix_quality": _int(fields[5], "fix quality", line),
        "satellites": _int(fields[6] or "0", "satellites", line),
    }
    _position(fields[1:5], values, line)
    if fields[7]:
        values["hdop"] = _float(fields[7], "HDOP", line)
    if fields[8]:
        values["altitude"] = _float(fields[8], "altitude", line)
    return _time_today(fields[0], received, line), values


def _rmc(fields: list[str], received: float, line: bytes) -> tuple[datetime, dict[str, Value]]:
    """Recommended minimum: date and time, validity, position, speed over ground, course."""
    if len(fields) < 11:
        raise DecodeError(f"RMC has {len(fields)} fields, expected at least 11", line)
    if fields[1] not in ("A", "V"):
        raise DecodeError(f"RMC status {fields[1]!r} is neither A nor V", line)
    values: dict[str, Value] = {"valid": fields[1] == "A"}
    _position(fields[2:6], values, line)
    if fields[6]:
        values["speed"] = round(_float(fields[6], "speed", line) * KNOT_M_S, 3)
    if fields[7]:
        values["course"] = _float(fields[7], "course", line)
    if not fields[8]:
        return _time_today(fields[0], received, line), values
    date = fields[8]
    if len(date) != 6 or not date.isdigit():
        raise DecodeError(f"RMC date {date!r} is not ddmmyy", line)
    hour, minute, second, micro = _clock(fields[0], line)
    try:
        year = _full_year(int(date[4:]), utc_from_epoch(received).year)
        ts = datetime(year, int(date[2:4]), int(date[:2]), hour, minute, second, micro, UTC)
    except ValueError:
        raise DecodeError(f"RMC date {date!r} is not a calendar date", line) from None
    return ts, values


def _full_year(yy: int, this_year: int) -> int:
    """A two-digit year as the year nearest to when the sentence arrived."""
    century = this_year - this_year % 100
    return min(
        (century - 100 + yy, century + yy, century + 100 + yy), key=lambda y: abs(y - this_year)
    )


def _position(fields: list[str], values: dict[str, Value], line: bytes) -> None:
    """lat, N/S, lon, E/W into decimal degrees; all empty means no fix, which is no error."""
    lat, ns, lon, ew = fields
    if not (lat or lon):
        return
    latitude = _degrees(lat, 2, "latitude", line)
    longitude = _degrees(lon, 3, "longitude", line)
    if ns not in ("N", "S") or ew not in ("E", "W") or latitude > 90 or longitude > 180:
        raise DecodeError("position out of range or without hemisphere", line)
    values["latitude"] = round(-latitude if ns == "S" else latitude, 7)
    values["longitude"] = round(-longitude if ew == "W" else longitude, 7)


def _degrees(text: str, degree_digits: int, what: str, line: bytes) -> float:
    """`ddmm.mmmm` (or `dddmm.mmmm`) to degrees."""
    if len(text) < degree_digits + 2 or not text[:degree_digits].isdigit():
        raise DecodeError(f"{what} {text!r} is not d{'d' * degree_digits}mm.mmmm", line)
    minutes = _float(text[degree_digits:], what, line)
    if minutes >= 60:
        raise DecodeError(f"{what} {text!r} has 60 minutes or more", line)
    return int(text[:degree_digits]) + minutes / 60


def _clock(text: str, line: bytes) -> tuple[int, int, int, int]:
    match = _TIME.fullmatch(text)
    if match is None:
        raise DecodeError(f"time {text!r} is not hhmmss.ss", line)
    hour, minute, second = (int(part) for part in match.groups()[:3])
    if hour > 23 or minute > 59 or second > 60:
        raise DecodeError(f"time {text!r} is not a time of day", line)
    fraction = match.group(4) or ".0"
    return hour, minute, min(second, 59), int(float(fraction) * 1_000_000)


def _time_today(text: str, received: float, line: bytes) -> datetime:
    """A time of day without a date: the instant nearest to when the line arrived."""
    now = utc_from_epoch(received)
    if not text:
        return now
    hour, minute, second, micro = _clock(text, line)
    ts = now.replace(hour=hour, minute=minute, second=second, microsecond=micro)
    if ts - now > timedelta(hours=12):
        ts -= timedelta(days=1)
    elif now - ts > timedelta(hours=12):
        ts += timedelta(days=1)
    return ts


def _float(text: str, what: str, line: bytes) -> float:
    try:
        number = float(text)
    except ValueError:
        raise DecodeError(f"{what} {text!r} is not a number", line) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise DecodeError(f"{what} {text!r} is not a finite number", line)
    return number


def _int(text: str, what: str, line: bytes) -> int:
    if not text.isdigit() or len(text) > 6:
        raise DecodeError(f"{what} {text!r} is not a whole number", line)
    return int(text)


SENTENCES: dict[str, Callable[[list[str], float, bytes], tuple[datetime, dict[str, Value]]]] = {
    "GGA": _gga,
    "RMC": _rmc,
}
