"""A simulated Modbus RTU energy meter bus: several unit ids behind one serial line.

`EnergyMeterBus.feed(bytes)` is the whole device: it takes what the master wrote and
returns what the bus answers. `MeterPort` puts it on a real pseudo-terminal behind a
stable symlink, with unplug and replug. The slave side is written here, independently
of the client library the gateway uses (only the CRC is pymodbus's), so a test through
it checks two implementations of the protocol against each other.

Register map of every unit (addresses as on the wire, from 0):

| kind    | address | type    | order (byte/word) | value                                  |
|---------|---------|---------|-------------------|----------------------------------------|
| holding | 0       | float32 | big/big           | voltage, V: 230 + unit_id / 10         |
| holding | 2       | float32 | big/big           | current, A: 5 + unit_id                |
| holding | 4       | uint32  | big/little        | energy, Wh: 1000 * unit_id + polls     |
| holding | 6       | int16   | big/-             | power factor x 1000: -950              |
| input   | 0       | uint16  | little/-          | frequency x 100: 5000                  |
| coil    | 0       | bool    |                   | relay closed: true                     |

Faults: `silent` unit ids never answer; `noise` (0..1) is the share of answers that are
damaged (garbage before the frame, a bad CRC, or half a frame, in turn); `unplug()` on
the port makes the device disappear, `replug()` brings it back under the same symlink.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
import tty
from dataclasses import dataclass, field
from pathlib import Path

from pymodbus.framer import FramerRTU

_READS = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
_ILLEGAL_FUNCTION = 1
_ILLEGAL_ADDRESS = 2
_REQUEST_SIZE = 8  # unit, function, address (2), count (2), CRC (2)


def crc(frame: bytes) -> bytes:
    """The CRC bytes that follow `frame` on the wire."""
    return FramerRTU.compute_CRC(frame).to_bytes(2, "big")


@dataclass(slots=True)
class MeterUnit:
    """One unit's registers. `polls` counts the answered requests (energy rises with it)."""

    unit_id: int
    polls: int = 0

    def words(self, kind: str) -> dict[int, int | bool]:
        if kind == "coil":
            return {0: True}
        if kind == "discrete":
            return {}
        if kind == "input":
            return {0: int.from_bytes((5000).to_bytes(2, "little"), "big")}
        voltage = struct.pack(">f", 230 + self.unit_id / 10)
        current = struct.pack(">f", 5.0 + self.unit_id)
        energy = (1000 * self.unit_id + self.polls).to_bytes(4, "big")
        raw = voltage + current + energy[2:] + energy[:2] + (-950).to_bytes(2, "big", signed=True)
        return {i: int.from_bytes(raw[2 * i : 2 * i + 2], "big") for i in range(len(raw) // 2)}


@dataclass(slots=True)
class EnergyMeterBus:
    """Every unit on one RS-485 line, answering read requests (functions 1-4)."""

    unit_ids: tuple[int, ...] = (1, 2)
    silent: set[int] = field(default_factory=set)
    noise: float = 0.0
    seed: int = 0
    damaged: int = 0
    """How many answers were damaged on purpose (the gateway should count as many)."""
    _units: dict[int, MeterUnit] = field(default_factory=dict)
    _pending: bytes = b""
    _random: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._units = {unit_id: MeterUnit(unit_id) for unit_id in self.unit_ids}
        self._random.seed(self.seed)

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the master; return the answers to every whole request among them.

        Bytes that are not a request with a good CRC are skipped one at a time, as a
        slave hunting for the next frame does; requests for absent or silent units get
        no answer.
        """
        self._pending += data
        out = b""
        while len(self._pending) >= _REQUEST_SIZE:
            frame = self._pending[:_REQUEST_SIZE]
            if frame[1] not in _READS or crc(frame[:6]) != frame[6:]:
                self._pending = self._pending[1:]
                continue
            self._pending = self._pending[_REQUEST_SIZE:]
            unit = self._units.get(frame[0])
            if unit is not None and unit.unit_id not in self.silent:
                out += self._damage(self._answer(unit, frame))
        return out

    def _answer(self, unit: MeterUnit, frame: bytes) -> bytes:
        function = frame[1]
        address, count = struct.unpack(">HH", frame[2:6])
        words = unit.words(_READS[function])
        if count == 0 or any(address + i not in words for i in range(count)):
            body = bytes([unit.unit_id, function | 0x80, _ILLEGAL_ADDRESS])
            return body + crc(body)
        unit.polls += 1
        values = [words[address + i] for i in range(count)]
        if function in (1, 2):
            packed = sum(1 << i for i, bit in enumerate(values) if bit)
            data = packed.to_bytes((count + 7) // 8, "little")
        else:
            data = b"".join(int(word).to_bytes(2, "big") for word in values)
        body = bytes([unit.unit_id, function, len(data)]) + data
        return body + crc(body)

    def _damage(self, answer: bytes) -> bytes:
        if not self.noise or self._random.random() >= self.noise:
            return answer
        self.damaged += 1
        match self.damaged % 3:
            case 1:  # line noise before the frame: the frame itself still arrives whole
                return self._random.randbytes(3) + answer
            case 2:  # a bit flipped in transit: the CRC no longer matches
                return answer[:3] + bytes([answer[3] ^ 0x10]) + answer[4:]
            case _:  # the line dropped out mid-frame
                return answer[: len(answer) // 2]


class MeterPort:
    """An `EnergyMeterBus` on a pseudo-terminal whose slave is reachable at `link`.

    Runs on the caller's event loop; `unplug()` closes the pty and removes the link (the
    gateway's open port fails with EIO, as when a USB adapter is pulled); `replug()` makes
    a new pty behind the same link.
    """

    def __init__(self, bus: EnergyMeterBus, link: Path) -> None:
        self.bus = bus
        self.link = link
        self._master: int | None = None
        self._slave: int | None = None

    async def __aenter__(self) -> MeterPort:
        self.replug()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.unplug()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def replug(self) -> None:
        if self._master is not None:
            return
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: bytes pass as they are
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.link.with_name(self.link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.link)  # atomic: the link never points at nothing while plugged
        asyncio.get_running_loop().add_reader(master, self._readable)

    def unplug(self) -> None:
        if self._master is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        asyncio.get_running_loop().remove_reader(self._master)
        os.close(self._master)
        if self._slave is not None:
            os.close(self._slave)
        self._master = self._slave = None

    def _readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: nobody holds the slave open
            return
        answer = self.bus.feed(data)
        if answer:
            with contextlib.suppress(BlockingIOError):
                os.write(self._master, answer)
