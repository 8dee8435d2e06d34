"""What came back on the line for one request, when it was not simply a good answer.

pymodbus hunts past garbage and drops frames with a bad CRC silently: the request just
times out. The operator needs to know why (a noisy line, a wrong baud rate, a unit that
is off), so `RxTrace` keeps the bytes pymodbus saw for the current request (through its
documented `trace_packet` hook) and `classify_reply` names the fault. Pure, no I/O.
"""

from __future__ import annotations

from typing import Literal

from pymodbus.framer import FramerRTU

LineFault = Literal["no_response", "garbage", "bad_crc", "short_frame"]

_EXCEPTION_FRAME_SIZE = 5  # unit, function | 0x80, exception code, CRC (2)


class RxTrace:
    """The bytes received for the current request, and any that came while none was out.

    pymodbus hands `trace_packet` its whole receive buffer each time bytes arrive, so the
    latest view holds every byte of the current answer that pymodbus has not consumed yet
    (a frame it gave up on, with a bad CRC, is the last view before it was consumed).
    Bytes that arrive after `settle()` (a late answer, noise between requests) are kept
    apart in `unsolicited`, for `take_unsolicited()`.
    """

    def __init__(self) -> None:
        self.received = b""
        self.unsolicited = b""
        self._waiting = False

    def packet(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self.received, self._waiting = b"", True
        elif self._waiting:
            self.received = data
        else:
            self.unsolicited = data
        return data

    def settle(self) -> None:
        """The current request is over (answered, or given up on)."""
        self._waiting = False

    def take_unsolicited(self) -> bytes:
        data, self.unsolicited = self.unsolicited, b""
        return data


def expected_size(function: int, count: int) -> int:
    """The size of a good answer to a read: unit, function, byte count, data, CRC (2)."""
    data = (count + 7) // 8 if function in (1, 2) else 2 * count
    return 5 + data


def classify_reply(unit_id: int, function: int, count: int, data: bytes) -> LineFault | None:
    """The fault in `data`, the bytes received for one read request; None if it is a clean answer.

    A good answer preceded by junk is "garbage" (the reading still counts); a frame that
    starts right but is cut off is "short_frame"; one that is whole but fails its CRC is
    "bad_crc"; bytes with no frame start for this unit are "garbage" (also what a wrong
    baud rate looks like); nothing at all is "no_response".
    """
    if not data:
        return "no_response"
    answers = (function, function | 0x80)
    starts = [
        start
        for start in range(len(data) - 1)
        if data[start] == unit_id and data[start + 1] in answers
    ]
    for start in starts:
        frame = _frame_at(data, start, function, count)
        if len(frame) == _size(data[start + 1], function, count) and _crc_ok(frame):
            return "garbage" if start else None
    if not starts:
        return "garbage"
    first = starts[0]
    short = len(_frame_at(data, first, function, count)) < _size(data[first + 1], function, count)
    return "short_frame" if short else "bad_crc"


def _size(answer_function: int, function: int, count: int) -> int:
    return _EXCEPTION_FRAME_SIZE if answer_function & 0x80 else expected_size(function, count)


def _frame_at(data: bytes, start: int, function: int, count: int) -> bytes:
    return data[start : start + _size(data[start + 1], function, count)]


def _crc_ok(frame: bytes) -> bool:
    return FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big"))
