"""The serial line source: `protocol: lines` and `protocol: nmea` on one port.

Two tasks share a driver's lifetime (one TaskGroup): the port loop and the putter.
The port loop waits for the device (`wait_for_port`), opens it, writes the
query command if there is one, and reads, frames and decodes until the device
goes away; then it waits again. The putter hands decoded readings to the buffer
in batches. A serial device cannot be asked to send again, so readings decoded
before an unplug or while the buffer refuses them are held in the driver's
`outbox` (up to `_MAX_PENDING`; it outlives the driver's task, see `Outbox`) and
retried; beyond that the newest are dropped and counted (`overflow`).

Bad input never costs a good line: each line is decoded on its own, and every
failure is counted (`stats.malformed`, `stats.oversized` for overlong lines, and
by kind in `stats.counters`: `bad_checksum`, `partial`, `disconnects`, `stalled`,
`overflow`) and logged at most every 10 s per kind with a hex sample.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from drivers.base import DriverStats, Outbox, Sink
from drivers.serial.framing import LineFramer, Overlong
from drivers.serial.lines import decode_line
from drivers.serial.lines_config import SerialLinesConfig
from drivers.serial.link import CannotOpen, PortGone, SerialLink, open_link
from drivers.serial.nmea import ChecksumError, decode_nmea
from drivers.serial.nmea_config import SerialNmeaConfig
from drivers.serial.ports import wait_for_port
from gateway.backoff import Backoff
from gateway.errors import DecodeError
from gateway.logs import RateLimitedLog
from gateway.model import Reading

log = structlog.get_logger("drivers.serial")

_MAX_PENDING = 10_000

LineDecoder = Callable[[bytes, float], Reading | None]
"""(line without its delimiter, received at (epoch s)) -> a reading, None (ignored), DecodeError."""


@dataclass(frozen=True, slots=True)
class _Protocol:
    """What differs between line protocols: framing, decoding, an optional query, and what
    to suggest when lines do not decode or the device goes quiet."""

    delimiter: bytes
    max_line_bytes: int
    decode: LineDecoder
    command: bytes | None
    poll_interval_s: float | None
    stall_timeout_s: float | None
    malformed_hint: str
    silent_hint: str


_WIRING_HINT = "check the cable and that baudrate, bytesize, parity and stopbits match the device"
_HINTS = {
    "oversized": "raise max_line_bytes if the device sends longer lines; garbage without line "
    "ends means a wrong baudrate or delimiter",
    "bad_checksum": _WIRING_HINT,
    "partial": "the device went away mid-line; nothing to do unless it keeps happening",
}


def _protocol(config: SerialLinesConfig | SerialNmeaConfig) -> _Protocol:
    device = config.device or config.name
    if isinstance(config, SerialNmeaConfig):
        return _Protocol(
            delimiter=b"\n",
            max_line_bytes=config.max_line_bytes,
            decode=lambda line, received: decode_nmea(
                line, received, device, config.name, config.sentences, config.tags
            ),
            command=None,
            poll_interval_s=None,
            stall_timeout_s=config.stall_timeout_s,
            malformed_hint=f"not NMEA 0183 sentences: {_WIRING_HINT} (4800 or 9600 baud)",
            silent_hint="check the receiver's power and cable, or raise stall_timeout_s",
        )
    return _Protocol(
        delimiter=config.delimiter.encode(config.encoding),
        max_line_bytes=config.max_line_bytes,
        decode=lambda line, received: decode_line(config, line, received, config.name),
        command=config.command.encode(config.encoding) if config.command else None,
        poll_interval_s=config.poll_interval_s,
        stall_timeout_s=config.stall_timeout_s,
        malformed_hint=f"compare the sample with format {config.format!r} and its options "
        f"(encoding, columns, pattern, timestamp); garbage means: {_WIRING_HINT}",
        silent_hint="check the device's power and cable"
        + (
            "; if it only answers when asked, set command and poll_interval_s"
            if config.poll_interval_s is None
            else ""
        )
        + "; or raise stall_timeout_s",
    )


class SerialLineSource:
    """A `type: serial` driver instance with `protocol: lines` or `protocol: nmea`."""

    def __init__(
        self, config: SerialLinesConfig | SerialNmeaConfig, gateway_id: str, sink: Sink
    ) -> None:
        self.name = config.name
        self.config = config
        self.stats = DriverStats(type="serial")
        self._protocol = _protocol(config)
        self._last_byte = time.monotonic()
        self._port: str | None = None
        """The device path open now, or last open: for log lines about its input."""
        self._first_line = True
        """No line read yet from the port opened last: it may begin mid-line."""
        self._log = log.bind(driver=self.name)
        self._rate_limited = RateLimitedLog(self._log)
        self.outbox = Outbox(_MAX_PENDING, sink, self.name, self.stats, self._rate_limited)

    async def run(self) -> None:
        await self.outbox.deliver_while(self._port_forever)

    # -- the port ---------------------------------------------------------------------------

    async def _port_forever(self) -> None:
        backoff = Backoff(0.5, 30.0)
        lost = None
        while True:
            path = await wait_for_port(self.config, self._log, self.stats, lost)
            lost = None
            self._port = path
            opened = time.monotonic()
            try:
                with open_link(path, self.config) as link:
                    self._log.info("serial port open", port=path, baudrate=self.config.baudrate)
                    await self._session(link)
            except CannotOpen as exc:
                self.stats.state = "cannot open"
                self.stats.failed(str(exc))
                self._rate_limited.error("open", "cannot open serial port", error=str(exc))
            except PortGone as exc:
                self.stats.bump("disconnects")
                self.stats.failed(str(exc))
                lost = str(exc)  # wait_for_port says so
            await asyncio.sleep(backoff.delay_after(opened))

    async def _session(self, link: SerialLink) -> None:
        """Read one open port until it goes away (`PortGone`) or the driver is cancelled."""
        framer = LineFramer(self._protocol.delimiter, self._protocol.max_line_bytes)
        self._first_line = True
        self.stats.state = "reading"
        self._last_byte = time.monotonic()
        try:
            async with asyncio.TaskGroup() as tasks:
                if self._protocol.command is not None:
                    tasks.create_task(self._query(link, self._protocol.command))
                if self._protocol.stall_timeout_s is not None:
                    tasks.create_task(self._watch_stall(self._protocol.stall_timeout_s))
                while True:
                    data = await link.read()
                    self._last_byte = time.monotonic()
                    if self.stats.state != "reading":
                        self.stats.state = "reading"
                        self._log.info("serial device talks again")
                    self._take(framer.feed(data), time.time())
        except* PortGone as group:
            tail = framer.reset()
            if tail:
                self.stats.bump("partial")
                self._warn("partial", "half a line when the port closed; skipped", tail)
            raise group.exceptions[0] from None

    async def _query(self, link: SerialLink, command: bytes) -> None:
        """Write the command now, and every `poll_interval_s` if set."""
        while True:
            await link.write(command)
            if self._protocol.poll_interval_s is None:
                return
            await asyncio.sleep(self._protocol.poll_interval_s)

    async def _watch_stall(self, limit_s: float) -> None:
        """Count and show a line that went quiet; reading goes on when it talks again."""
        while True:
            quiet = time.monotonic() - self._last_byte
            if quiet >= limit_s and self.stats.state == "reading":
                self.stats.state = "stalled"
                self.stats.bump("stalled")
                self._log.warning(
                    "serial device silent; waiting for it to talk again",
                    port=self._port,
                    silent_s=round(quiet, 1),
                    stall_timeout_s=limit_s,
                    hint=self._protocol.silent_hint,
                )
            await asyncio.sleep(max(0.1, limit_s - quiet) if quiet < limit_s else limit_s)

    # -- decoding ---------------------------------------------------------------------------

    def _take(self, lines: list[bytes | Overlong], received: float) -> None:
        readings = []
        for line in lines:
            first, self._first_line = self._first_line, False
            if isinstance(line, Overlong):
                self.stats.oversized += 1
                self._warn(
                    "oversized",  # the name status gives the count
                    f"line longer than max_line_bytes ({self._protocol.max_line_bytes})",
                    line.sample,
                )
                continue
            try:
                reading = self._protocol.decode(line.rstrip(b"\r"), received)
            except DecodeError as exc:  # a ChecksumError too
                if first:  # the port opened while the device was mid-line: no wiring fault
                    self.stats.bump("partial")
                    self._log.info("first line after the port opened was cut; skipped")
                else:
                    self._bad_line(exc)
                continue
            if reading is not None:
                readings.append(reading)
        if not readings:
            return
        if not self.outbox.add(readings):
            self.stats.bump("overflow", len(readings))
            self._rate_limited.warning(
                "overflow",
                "too many serial readings wait for the buffer; the newest were dropped",
                port=self._port,
                dropped=len(readings),
                waiting=len(self.outbox),
                hint="the buffer does not take readings: see its log lines "
                "(buffer full, disk error)",
            )

    def _bad_line(self, exc: DecodeError) -> None:
        self.stats.malformed += 1
        if isinstance(exc, ChecksumError):
            self.stats.bump("bad_checksum")
            self._warn("bad_checksum", str(exc), exc.sample)
        else:
            self._warn("malformed", str(exc), exc.sample)

    def _warn(self, kind: str, problem: str, sample: bytes) -> None:
        self._rate_limited.warning(
            kind,
            "bad serial input; skipped",
            port=self._port,
            kind=kind,
            problem=problem,
            sample=sample.hex(" "),
            hint=_HINTS.get(kind, self._protocol.malformed_hint),
        )
