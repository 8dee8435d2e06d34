"""The Modbus RTU source: one RS-485 bus, its units polled in turn, each on its own schedule.

RS-485 is half duplex: one request at a time, so a unit that does not answer costs the
others bus time. Each request therefore has a short deadline (`timeout_s`) and few
retries, and a unit that keeps failing is polled less often (its interval doubling up
to `max_backoff_s`) until it answers again; the units that answer keep their schedule.

One pymodbus `AsyncModbusSerialClient` per bus, created per plug-in: the port is found
with `wait_for_port` (absent at start-up or unplugged: logged once, retried with
backoff), and when pymodbus reports the line lost the client is dropped and the search
starts over. Readings go to the buffer through the driver's `outbox`, small; while the
buffer refuses them they are held and polling pauses (nothing is dropped). The outbox
outlives the driver's task: readings polled before a failure, a reload or a stop are
still put (see `Outbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from drivers.base import DriverStats, Outbox, Sink
from drivers.serial.modbus_config import ModbusRtuConfig, ModbusUnit
from drivers.serial.modbus_frames import RxTrace, classify_reply
from drivers.serial.modbus_registers import Block, decode_block, plan_blocks
from drivers.serial.modbus_schedule import UnitSchedule
from drivers.serial.port_config import PARITY
from drivers.serial.ports import describe_open_error, wait_for_port
from gateway.backoff import Backoff
from gateway.errors import DecodeError
from gateway.logs import RateLimitedLog
from gateway.model import Reading, Value, utc_from_epoch

log = structlog.get_logger("drivers.serial.modbus")

# kind -> (function code, the pymodbus client method that sends it)
_READS = {
    "coil": (1, "read_coils"),
    "discrete": (2, "read_discrete_inputs"),
    "holding": (3, "read_holding_registers"),
    "input": (4, "read_input_registers"),
}
_OUTBOX = 64  # readings (one per poll) waiting for the buffer before polling pauses

Read = Callable[..., Awaitable[ModbusPDU]]


class _PortLost(Exception):
    """pymodbus reported the line closed (device unplugged): start over from `wait_for_port`."""


class ModbusSource:
    """A `type: serial`, `protocol: modbus-rtu` driver instance: one bus."""

    def __init__(self, config: ModbusRtuConfig, gateway_id: str, sink: Sink) -> None:
        self.name = config.name
        self.config = config
        self.stats = DriverStats(type="serial")
        self._units = [UnitSchedule(unit, plan_blocks(unit.registers)) for unit in config.units]
        self._trace = RxTrace()
        self._last_request = (0, 0, 0)  # unit id, function, count: what a late answer answers
        self._log = log.bind(driver=self.name)
        self._rate_limited = RateLimitedLog(self._log)
        self.outbox = Outbox(
            _OUTBOX, sink, self.name, self.stats, self._rate_limited, "holding them, polling paused"
        )

    async def run(self) -> None:
        await self.outbox.deliver_while(self._keep_port)

    async def _keep_port(self) -> None:
        """Find the port, poll until it goes away, start over; for ever."""
        backoff = Backoff(0.5, 30.0)
        went_away = None
        while True:
            path = await wait_for_port(self.config, self._log, self.stats, went_away)
            went_away = None
            lost = asyncio.Event()

            def on_connect(up: bool, lost: asyncio.Event = lost) -> None:
                if not up:
                    lost.set()

            client = AsyncModbusSerialClient(
                path,
                baudrate=self.config.baudrate,
                bytesize=self.config.bytesize,
                parity=PARITY[self.config.parity],
                stopbits=self.config.stopbits,  # type: ignore[arg-type]  # 1.5 is pyserial's
                name=self.name,
                reconnect_delay=0,  # reconnecting is ours: through wait_for_port
                timeout=2 * max(unit.timeout_s for unit in self.config.units),
                retries=0,  # retries are ours too, with each unit's own deadline
                trace_packet=self._trace.packet,
                trace_connect=on_connect,
            )
            opened = time.monotonic()
            try:
                if await self._connect(client, path):
                    self.stats.state = "polling"
                    self._log.info("polling Modbus units", port=path, units=self._unit_ids())
                    await self._poll(client, lost)
            except _PortLost:
                self.stats.state = "device lost"
                went_away = f"{path} went away"  # wait_for_port says so
                self.stats.failed(went_away)
            finally:
                client.close()
            await asyncio.sleep(backoff.delay_after(opened))

    async def _connect(self, client: AsyncModbusSerialClient, path: str) -> bool:
        """Open the port; on failure log why, in words a user can act on."""
        try:
            connected = await client.connect()
            _raise_a_swallowed_cancel()
            if connected:
                return True
        except termios.error as exc:  # pyserial opened it, the line settings were refused
            c = self.config
            reason = (
                f"{path} refuses the line settings (baudrate {c.baudrate}, {c.bytesize} bits, "
                f"parity {c.parity}, {c.stopbits} stop bits): {exc.args[-1]}; "
                "check that the adapter supports them"
            )
        else:  # pymodbus only says "failed": open the path ourselves to learn why
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError as exc:
                reason = describe_open_error(path, exc)
            else:
                tty = os.isatty(fd)
                os.close(fd)
                reason = (
                    f"cannot open {path} as a serial port (pymodbus gives no reason): another "
                    "program may hold it (a serial console, gpsd, ModemManager; see `fuser "
                    f"{path}`), or the adapter refuses baudrate {self.config.baudrate}, "
                    f"parity {self.config.parity}"
                    if tty
                    else f"{path} is not a serial port (not a tty); check `port`"
                )
        self.stats.state = "cannot open"
        self.stats.failed(reason)
        self._rate_limited.error("open", "cannot open the serial port", error=reason)
        return False

    async def _poll(self, client: AsyncModbusSerialClient, lost: asyncio.Event) -> None:
        """Poll whichever unit is due next; wait when none is."""
        now = time.monotonic()
        for unit in self._units:
            unit.due = now
        while True:
            unit = min(self._units, key=lambda unit: unit.due)
            delay = unit.due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await lost.wait()
            if lost.is_set():
                raise _PortLost
            if delay <= 0:
                await self._poll_unit(client, unit, lost)

    async def _poll_unit(
        self, client: AsyncModbusSerialClient, unit: UnitSchedule, lost: asyncio.Event
    ) -> None:
        values: dict[str, Value] = {}
        for block in unit.blocks:
            data = await self._read(client, unit, block, lost)
            if data == "no answer":
                self._missed(unit)
                return
            if data == "refused":  # logged by `_read`; the other blocks still make a reading
                continue
            try:
                decoded, errors = decode_block(block, data)
            except DecodeError as exc:  # an answer of the wrong size: as good as none
                errors = [exc]
                decoded = {}
            values.update(decoded)
            for error in errors:
                self.stats.bump("decode_error")
                self._rate_limited.warning(
                    f"decode-{unit.config.unit_id}",
                    "Modbus value cannot be decoded; skipped",
                    unit=unit.config.unit_id,
                    device=unit.config.device,
                    error=str(error),
                    sample=error.sample.hex(" "),
                    hint="check the register's type, byte_order and word_order (and scale, "
                    "offset) against the device's register map",
                )
        if unit.answered(time.monotonic()):
            self._log.info("Modbus unit answers again", unit=unit.config.unit_id)
        if values:
            reading = self._reading(unit.config, values)
            await self.outbox.wait_for_room()
            self.outbox.add([reading])

    async def _read(
        self, client: AsyncModbusSerialClient, unit: UnitSchedule, block: Block, lost: asyncio.Event
    ) -> list[int] | list[bool] | Literal["no answer", "refused"]:
        """One block's words (or bits), with the unit's deadline and retries."""
        read: Read = getattr(client, _READS[block.kind][1])
        unit_id = unit.config.unit_id
        for _attempt in range(unit.config.retries + 1):
            if lost.is_set():
                raise _PortLost
            self._stray_bytes()
            self._last_request = (unit_id, _READS[block.kind][0], block.count)
            try:
                async with asyncio.timeout(unit.config.timeout_s):
                    response = await read(block.address, count=block.count, device_id=unit_id)
            except TimeoutError:
                if lost.is_set():  # unplugged while waiting: not the unit's fault
                    raise _PortLost from None
                self._line_fault(unit_id, block, answered=False)
                await self._let_a_late_answer_pass(unit, lost)
                continue
            except ModbusException as exc:  # not connected: the line is going away
                if lost.is_set():
                    raise _PortLost from None
                self.stats.bump("request_errors")
                self._rate_limited.warning(
                    "modbus-error",
                    "Modbus request failed",
                    unit=unit_id,
                    kind=block.kind,
                    address=block.address,
                    count=block.count,
                    error=str(exc),
                    hint="pymodbus has no usable connection to the port; a device that went "
                    "away is reopened once back; if this repeats, check the adapter, its cable "
                    "and power",
                )
                continue
            finally:
                self._trace.settle()
            _raise_a_swallowed_cancel()  # pymodbus's read waits in `asyncio.wait_for` too
            self._line_fault(unit_id, block, answered=True)
            if response.isError():
                self.stats.bump("exception_response")
                self._rate_limited.warning(
                    f"exception-{unit_id}",
                    "Modbus unit refused a read; check kind and address in its register map",
                    unit=unit_id,
                    kind=block.kind,
                    address=block.address,
                    count=block.count,
                    exception_code=getattr(response, "exception_code", None),
                    **_numbering_hint(block.address),
                )
                return "refused"
            return list(response.bits if block.kind in ("coil", "discrete") else response.registers)
        return "no answer"

    async def _let_a_late_answer_pass(self, unit: UnitSchedule, lost: asyncio.Event) -> None:
        """Keep the line quiet for another `timeout_s` after a timeout, as libmodbus does.

        An RTU answer does not say which request it answers: a late one that arrived while
        the next request to the unit was out would be taken as that answer, and another
        block's values stored under this block's names. Arriving now, it is counted as
        `late_answer` (against the request it belongs to) and dropped.
        """
        self._trace.settle()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(unit.config.timeout_s):
                await lost.wait()
        if lost.is_set():
            raise _PortLost
        self._stray_bytes()

    def _stray_bytes(self) -> None:
        """Count bytes that came while no request was out: a late answer, or noise."""
        data = self._trace.take_unsolicited()
        if not data:
            return
        if classify_reply(*self._last_request, data) is None:
            self.stats.bump("late_answer")
            self._rate_limited.warning(
                "late-answer",
                "a Modbus unit answered after its timeout_s; consider a longer timeout_s",
                unit=self._last_request[0],
            )
            return
        self.stats.bump("garbage")
        self.stats.malformed += 1
        self._rate_limited.warning(
            "line-stray",
            "bad bytes on the Modbus line between requests",
            sample=data[:64].hex(" "),
            hint="check wiring, termination and that baudrate/parity match the devices",
        )

    def _line_fault(self, unit_id: int, block: Block, answered: bool) -> None:
        """Count and log what was wrong with the bytes that came back, if anything."""
        data = self._trace.received
        fault = classify_reply(unit_id, _READS[block.kind][0], block.count, data)
        if fault is None or (answered and fault == "no_response"):
            return
        self.stats.bump(fault)
        if fault == "no_response":
            return  # logged per unit by `_missed`, once it gives up on the poll
        self.stats.malformed += 1
        self._rate_limited.warning(
            f"line-{fault}",
            "bad bytes on the Modbus line"
            + (" (the answer around them was good)" if answered else ""),
            fault=fault,
            unit=unit_id,
            sample=data[:64].hex(" "),
            hint="check wiring, termination and that baudrate/parity match the devices",
        )

    def _missed(self, unit: UnitSchedule) -> None:
        """Back the unit off; say so once per outage (`answered` says when it is over)."""
        delay = unit.missed(time.monotonic())
        self.stats.failed(f"unit {unit.config.unit_id} ({unit.config.device}) does not answer")
        if unit.failures > 1:
            return
        self._log.warning(
            "Modbus unit does not answer; polling it less often until it does",
            unit=unit.config.unit_id,
            device=unit.config.device,
            next_try_in_s=round(delay, 1),
            hint="check its unit id, power and wiring",
        )

    def _reading(self, unit: ModbusUnit, values: dict[str, Value]) -> Reading:
        units = {
            spec.name: spec.unit
            for spec in unit.registers
            if spec.unit is not None and spec.name in values
        }
        return Reading(
            device=unit.device,
            ts=utc_from_epoch(time.time()),
            values=values,
            source=self.name,
            units=units,
            tags=unit.tags,
        )

    def _unit_ids(self) -> list[int]:
        return [unit.config.unit_id for unit in self._units]


def _raise_a_swallowed_cancel() -> None:
    """Raise the cancel that pymodbus's connect or read may have swallowed.

    It opens the port and waits for each answer inside `asyncio.wait_for`, which on Python
    3.11 returns the result and drops a cancel that arrives as it completes (CPython
    gh-86296). The driver would then poll on, and the reload or stop that cancelled it
    would wait for it (a chaos soak's reload wedged three drivers until a SIGKILL).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _numbering_hint(address: int) -> dict[str, str]:
    """Register maps often number registers from 1 with the kind in front (40001 is holding
    register 0, 30001 input register 0): written as an address, a device refuses it."""
    if address < 10_001:
        return {}
    kind = {0: "coil", 1: "discrete", 3: "input", 4: "holding"}.get(address // 10_000)
    if kind is None or address % 10_000 == 0:
        return {}
    return {
        "numbering": f"if the map's {address} means {kind} register {address % 10_000 - 1}, "
        f"write kind: {kind}, address: {address % 10_000 - 1}"
    }
