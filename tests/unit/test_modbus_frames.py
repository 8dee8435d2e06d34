"""Naming what came back for a read: clean, garbage around a good answer, bad CRC, half, nothing."""

from __future__ import annotations

import pytest

from drivers.serial.modbus_frames import RxTrace, classify_reply, expected_size

# Unit 1, read holding registers (3), 2 registers: 0x4148 0x0000 (12.5 as float32), CRC.
GOOD = bytes.fromhex("01 03 04 41 48 00 00 6e 19")
EXCEPTION = bytes.fromhex("01 83 02 c0 f1")  # illegal data address


def test_the_golden_answer_has_the_right_crc_and_size() -> None:
    assert classify_reply(1, 3, 2, GOOD) is None
    assert len(GOOD) == expected_size(3, 2)
    assert expected_size(1, 9) == 7  # 9 coils fit in 2 data bytes


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (b"", "no_response"),
        (EXCEPTION, None),
        (b"\xff\x00\x13" + GOOD, "garbage"),  # noise before a good answer
        (GOOD[:3] + bytes([GOOD[3] ^ 0x10]) + GOOD[4:], "bad_crc"),
        (GOOD[:5], "short_frame"),
        (bytes.fromhex("e0 fc 1c 80 fe 00 f8"), "garbage"),  # 9600 bytes read at 19200
        (bytes.fromhex("02 03 04 41 48 00 00 5d 19"), "garbage"),  # another unit's answer
    ],
)
def test_each_fault_is_named(data: bytes, fault: str | None) -> None:
    assert classify_reply(1, 3, 2, data) == fault


def test_the_trace_keeps_what_arrived_for_a_request_apart_from_stray_bytes() -> None:
    trace = RxTrace()
    assert trace.packet(True, b"request") == b"request"
    trace.packet(False, b"\x01\x03")
    trace.packet(False, b"\x01\x03\x04")  # pymodbus passes its whole buffer each time
    assert trace.received == b"\x01\x03\x04"
    trace.settle()
    trace.packet(False, b"\xfe\xfe")  # after the request is over: noise, or a late answer
    assert trace.received == b"\x01\x03\x04"
    assert trace.take_unsolicited() == b"\xfe\xfe"
    assert trace.take_unsolicited() == b""
    trace.packet(True, b"request")
    assert trace.received == b""
