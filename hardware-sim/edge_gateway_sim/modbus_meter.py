"""A simulated Modbus RTU energy meter bus: several unit ids behind one serial line.

`ModbusMeter` is a serial-sim device model (`model: modbus-meter` in a scenario): the
runner hands `answer()` what the gateway wrote and sends back what the bus answers, on
a pty behind a stable symlink (`serial_sim.pty_port`, which also unplugs and replugs).
The slave side is written here, independently of the client library the gateway uses
(only the CRC is pymodbus's), so a test through it checks two implementations of the
protocol against each other.

Register map of every unit (addresses as on the wire, from 0):

| kind    | address | type    | order (byte/word) | value                                  |
|---------|---------|---------|-------------------|----------------------------------------|
| holding | 0       | float32 | big/big           | voltage, V: 230 + unit_id / 10         |
| holding | 2       | float32 | big/big           | current, A: 5 + unit_id                |
| holding | 4       | uint32  | big/little        | energy, Wh: 1000 * unit_id + polls     |
| holding | 6       | int16   | big/-             | power factor x 1000: -950              |
| input   | 0       | uint16  | little/-          | frequency x 100: 5000                  |
| coil    | 0       | bool    |                   | relay closed: true                     |

Options: `units` (the unit ids on the bus, default [1, 2]); `silent` (unit ids that
never answer; tests may change the `silent` set while it runs); `damage` (0..1, the
share of answers damaged on the way: garbage before the frame, a bad CRC, or half a
frame, in turn); `late` (unit id -> seconds: that unit answers after so long, as a slow
meter or a busy gateway converter does). The scenario's unplug, noise and stall faults
apply too (bad_frames damages frames a device sends by itself, which a Modbus slave never
does).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pymodbus.framer import FramerRTU

from edge_gateway_sim.serial_sim.models import DeviceModel, ModelError

_READS = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
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


class ModbusMeter(DeviceModel):
    """Every unit on one RS-485 line, answering read requests (functions 1-4)."""

    OPTIONS = MappingProxyType(
        {
            **DeviceModel.OPTIONS,
            "interval_s": None,
            "units": (1, 2),
            "silent": (),
            "damage": 0,
            "late": {},
        }
    )

    def __init__(self, options: Mapping[str, Any], rng: random.Random) -> None:
        super().__init__(options, rng)
        units, silent, damage = (self.options[key] for key in ("units", "silent", "damage"))
        for key, ids in (("units", units), ("silent", silent)):
            if not isinstance(ids, list | tuple) or not all(
                isinstance(i, int) and 1 <= i <= 247 for i in ids
            ):
                raise ModelError(f"{key} must be a list of unit ids from 1 to 247 (got {ids!r})")
        if not isinstance(damage, int | float) or not 0 <= damage <= 1:
            raise ModelError(f"damage must be a share from 0 to 1 (got {damage!r})")
        late = self.options["late"]
        if not isinstance(late, Mapping) or not all(
            isinstance(i, int) and isinstance(s, int | float) and s >= 0 for i, s in late.items()
        ):
            raise ModelError(f"late must map unit ids to seconds >= 0 (got {late!r})")
        self.late: dict[int, float] = dict(late)
        self.units = {unit_id: MeterUnit(unit_id) for unit_id in units}
        self.silent: set[int] = set(silent)
        self.damage = float(damage)
        self.damaged = 0
        """How many answers were damaged on purpose (the gateway should count as many)."""
        self._pending = b""

    def frame(self) -> bytes:
        """Never called (`interval_s` is None): a Modbus slave speaks only when asked."""
        return b""

    def answer(self, data: bytes) -> bytes:
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
            unit = self.units.get(frame[0])
            if unit is not None and unit.unit_id not in self.silent:
                out += self._damage(self._answer(unit, frame))
        return out

    def reply_delay_s(self, reply: bytes) -> float:
        return self.late.get(reply[0], 0.0)

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
        if not self.damage or self.rng.random() >= self.damage:
            return answer
        self.damaged += 1
        match self.damaged % 3:
            case 1:  # line noise before the frame: the frame itself still arrives whole
                return self.rng.randbytes(3) + answer
            case 2:  # a bit flipped in transit: the CRC no longer matches
                return answer[:3] + bytes([answer[3] ^ 0x10]) + answer[4:]
            case _:  # the line dropped out mid-frame
                return answer[: len(answer) // 2]
