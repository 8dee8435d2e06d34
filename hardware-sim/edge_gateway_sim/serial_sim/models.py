"""Device models: what a simulated serial device says, and how it answers.

A model is a class taking `(options, rng)`: `options` is the scenario's mapping
for the device (model-specific keys; unknown keys are errors), `rng` a seeded
random generator. The runner calls `frame()` every `interval_s` seconds (never,
when `interval_s` is None: a device that only answers), `answer()` with bytes the
gateway wrote, and `corrupt()` to damage a copy of the last frame for the
bad-frame fault. `seq` counts the good frames made so far (the number the
frame carries, when the format has one), so tests can tell which arrived.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar


class ModelError(ValueError):
    """A device's options in the scenario are wrong; the message says which."""


class DeviceModel:
    """Base of every model: options handling, the period, and the default corruption."""

    delimiter = b"\n"
    OPTIONS: ClassVar[Mapping[str, Any]] = {"interval_s": 1.0}
    """Known options and their defaults; subclasses extend it."""

    def __init__(self, options: Mapping[str, Any], rng: random.Random) -> None:
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ModelError(
                f"unknown option {unknown[0]!r}; known: {', '.join(sorted(self.OPTIONS))}"
            )
        self.options = {**self.OPTIONS, **options}
        interval = self.options["interval_s"]
        if interval is not None and not (isinstance(interval, int | float) and interval > 0):
            raise ModelError(f"interval_s must be a number > 0 or null (got {interval!r})")
        self.interval_s: float | None = interval
        self.rng = rng
        self.seq = 0

    def frame(self) -> bytes:
        """The next good frame, delimiter included."""
        raise NotImplementedError

    def answer(self, data: bytes) -> bytes:
        """Bytes to send back for bytes the gateway wrote; default: none."""
        return b""

    def reply_delay_s(self, reply: bytes) -> float:
        """How long the device takes before `reply` goes out; default: no time."""
        return 0.0

    def corrupt(self, frame: bytes) -> bytes:
        """A damaged copy of `frame` that no decoder accepts: here, its first half."""
        return frame[: max(1, len(frame) // 2)] + self.delimiter


class EnvSensor(DeviceModel):
    """Temperature and humidity drifting around a set point, with a sequence number."""

    def sample(self) -> dict[str, float | int]:
        self.seq += 1
        phase = self.seq / 30
        return {
            "seq": self.seq,
            "temperature": round(21.0 + 2.0 * math.sin(phase) + self.rng.uniform(-0.1, 0.1), 2),
            "humidity": round(45.0 + 5.0 * math.cos(phase) + self.rng.uniform(-0.5, 0.5), 1),
        }


class JsonLinesSensor(EnvSensor):
    """`{"seq":1,"temperature":21.53,"humidity":45.2}` per line (an Arduino printing JSON)."""

    def frame(self) -> bytes:
        return json.dumps(self.sample(), separators=(",", ":")).encode() + b"\n"


class KvSensor(EnvSensor):
    """`seq=1 temp=21.53 hum=45.2` per line, CR LF; with `query`, only in answer to it."""

    delimiter = b"\r\n"
    OPTIONS: ClassVar[Mapping[str, Any]] = {**DeviceModel.OPTIONS, "query": None}

    def __init__(self, options: Mapping[str, Any], rng: random.Random) -> None:
        super().__init__(options, rng)
        query = self.options["query"]
        self.query: bytes | None = query.encode() if isinstance(query, str) else None
        if self.query is not None:
            self.interval_s = None
        self._heard = b""

    def frame(self) -> bytes:
        values = self.sample()
        return (
            f"seq={values['seq']} temp={values['temperature']} hum={values['humidity']}\r\n"
        ).encode()

    def answer(self, data: bytes) -> bytes:
        if self.query is None:
            return b""
        self._heard += data
        replies = b""
        while self.query in self._heard:
            self._heard = self._heard.split(self.query, 1)[1]
            replies += self.frame()
        self._heard = self._heard[-len(self.query) :]
        return replies


class NmeaGps(DeviceModel):
    """A GPS receiver moving along a straight track: a GGA and an RMC sentence per fix.

    Fix `seq` is at `start + seq` seconds (UTC; `start` defaults to now), so a test
    can map a reading's time back to its fix. Checksums are valid; `corrupt()` changes
    a digit and keeps the old checksum, which the gateway must count as a bad checksum.
    """

    OPTIONS: ClassVar[Mapping[str, Any]] = {
        **DeviceModel.OPTIONS,
        "latitude": 48.1173,
        "longitude": 11.5167,
        "altitude_m": 545.4,
        "speed_m_s": 12.0,
        "course_deg": 84.4,
        "satellites": 8,
        "start": None,
    }

    def __init__(self, options: Mapping[str, Any], rng: random.Random) -> None:
        super().__init__(options, rng)
        start = self.options["start"]
        if start is None:  # now, to the second: GGA carries no date, the gateway adds today's
            self.start = datetime.now(UTC).replace(microsecond=0)
            return
        try:
            self.start = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        except ValueError:
            raise ModelError(f"start {self.options['start']!r} is not an RFC 3339 time") from None
        if self.start.tzinfo is None:
            raise ModelError("start needs a time zone, e.g. 2026-01-01T00:00:00Z")

    def fix(self, seq: int) -> tuple[datetime, float, float]:
        """Time, latitude and longitude of fix `seq`."""
        o = self.options
        distance = o["speed_m_s"] * seq
        course = math.radians(o["course_deg"])
        lat = o["latitude"] + distance * math.cos(course) / 111_320
        lon = o["longitude"] + distance * math.sin(course) / (
            111_320 * math.cos(math.radians(o["latitude"]))
        )
        return self.start.astimezone(UTC) + timedelta(seconds=seq), lat, lon

    def frame(self) -> bytes:
        self.seq += 1
        ts, lat, lon = self.fix(self.seq)
        o = self.options
        hms = ts.strftime("%H%M%S") + ".00"
        position = f"{_ddmm(lat, 2)},{'N' if lat >= 0 else 'S'},{_ddmm(lon, 3)},"
        position += "E" if lon >= 0 else "W"
        gga = f"GPGGA,{hms},{position},1,{o['satellites']:02d},0.9,{o['altitude_m']:.1f},M,47.0,M,,"
        knots = o["speed_m_s"] * 3600 / 1852
        rmc = (
            f"GPRMC,{hms},A,{position},{knots:.1f},{o['course_deg']:.1f},"
            f"{ts.strftime('%d%m%y')},,,A"
        )
        return sentence(gga) + sentence(rmc)

    def corrupt(self, frame: bytes) -> bytes:
        first = frame.split(b"\r\n", 1)[0]
        comma = first.index(b",")
        flipped = b"0" if first[comma + 1 : comma + 2] != b"0" else b"1"
        return first[: comma + 1] + flipped + first[comma + 2 :] + b"\r\n"


def sentence(body: str) -> bytes:
    """`$body*HH\\r\\n` with its checksum."""
    checksum = 0
    for byte in body.encode("ascii"):
        checksum ^= byte
    return f"${body}*{checksum:02X}\r\n".encode("ascii")


def _ddmm(degrees: float, width: int) -> str:
    value = abs(degrees)
    whole = int(value)
    return f"{whole:0{width}d}{(value - whole) * 60:07.4f}"
