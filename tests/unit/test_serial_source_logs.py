"""What the serial line source logs about bad input: the port, the problem and what to do.

The driver's `_take` is fed framed lines directly: no port, no event loop beyond the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from structlog.testing import capture_logs

from drivers.serial.framing import Overlong
from drivers.serial.lines_config import SerialLinesConfig
from drivers.serial.source import SerialLineSource
from gateway.model import Reading

PORT = "/dev/serial/by-id/usb-test"


class _Sink:
    async def put(self, readings: Sequence[Reading]) -> None:
        pass


def _source(**options: Any) -> SerialLineSource:
    config = SerialLinesConfig.model_validate(
        {"type": "serial", "name": "bench", "protocol": "lines", "port": PORT,
         "format": "kv", "max_line_bytes": 16, **options}
    )  # fmt: skip
    source = SerialLineSource(config, "gw", _Sink())
    source._port = PORT  # as `_port_forever` sets it once the port is found
    source._first_line = False  # lines of a port that has been read a while
    return source


async def test_an_overlong_line_is_logged_with_the_port_the_limit_and_a_hint() -> None:
    source = _source()
    with capture_logs() as logs:
        source._take([Overlong(b"x" * 16)], time.time())
    [entry] = logs
    assert entry["event"] == "bad serial input; skipped"
    assert entry["port"] == PORT and entry["driver"] == "bench"
    assert entry["problem"] == "line longer than max_line_bytes (16)"
    assert entry["kind"] == "oversized"  # as status counts it
    assert "raise max_line_bytes" in entry["hint"]
    assert source.stats.oversized == 1


async def test_a_line_that_does_not_decode_is_logged_with_the_port_the_sample_and_a_hint() -> None:
    source = _source()
    with capture_logs() as logs:
        source._take([b"temp 21.5", b"t=1e999"], time.time())
    assert [entry["problem"] for entry in logs] == [
        "expected name=value pairs, e.g. temp=21.5 hum=40"
    ]  # one per kind within 10 s: the second is counted, not logged
    assert logs[0]["port"] == PORT
    assert logs[0]["sample"] == b"temp 21.5".hex(" ")
    assert "format 'kv'" in logs[0]["hint"]
    assert source.stats.malformed == 2


async def test_a_bad_checksum_hints_at_the_line_settings() -> None:
    source = _source()
    with capture_logs() as logs:
        source._warn("bad_checksum", "bad NMEA checksum 00, expected 47", b"$GPGGA")
    [entry] = logs
    assert entry["kind"] == "bad_checksum" and entry["port"] == PORT
    assert "baudrate" in entry["hint"]


async def test_a_silent_device_is_logged_with_the_port_and_what_to_check() -> None:
    source = _source(stall_timeout_s=0.05)
    source.stats.state = "reading"
    source._last_byte = time.monotonic() - 1.0
    with capture_logs() as logs:
        watch = asyncio.create_task(source._watch_stall(0.05))
        await asyncio.sleep(0.02)
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    [entry] = logs
    assert entry["event"] == "serial device silent; waiting for it to talk again"
    assert entry["port"] == PORT and entry["stall_timeout_s"] == 0.05
    assert "set command and poll_interval_s" in entry["hint"]
    assert source.stats.state == "stalled" and source.stats.counters["stalled"] == 1


async def test_readings_beyond_the_outbox_are_logged_as_dropped_without_an_empty_sample() -> None:
    source = _source()
    source.outbox.limit = 1
    with capture_logs() as logs:
        source._take([b"t=1", b"t=2"], time.time())
    [entry] = logs
    assert entry["event"] == "too many serial readings wait for the buffer; the newest were dropped"
    assert entry["port"] == PORT and entry["dropped"] == 2 and entry["waiting"] == 0
    assert "sample" not in entry and "buffer" in entry["hint"]
    assert source.stats.counters["overflow"] == 2


async def test_a_cut_first_line_after_the_port_opens_is_partial_not_a_wiring_fault() -> None:
    """A device that streams is met mid-line when the port opens (a restart, a replug): that
    half line was 'malformed' with a hint to check the cable and baudrate (a chaos soak)."""
    source = _source()
    source._first_line = True  # as `_session` sets it for a port just opened
    with capture_logs() as logs:
        source._take([b"p 21.5", b"temp 21.5"], time.time())
    assert source.stats.counters["partial"] == 1
    assert source.stats.malformed == 1  # the second line is garbage all the same
    assert [e["event"] for e in logs] == [
        "first line after the port opened was cut; skipped",
        "bad serial input; skipped",
    ]
