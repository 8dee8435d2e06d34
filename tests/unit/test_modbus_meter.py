"""The simulated meter bus, byte for byte: what the gateway's tests stand on."""

from __future__ import annotations

import random

import pytest
from edge_gateway_sim.modbus_meter import ModbusMeter, crc
from edge_gateway_sim.serial_sim.models import ModelError


def request(unit: int, function: int, address: int, count: int) -> bytes:
    body = bytes([unit, function]) + address.to_bytes(2, "big") + count.to_bytes(2, "big")
    return body + crc(body)


def test_the_crc_is_the_one_in_the_modbus_specification() -> None:
    # "Read holding registers 0..9 of unit 1": 01 03 00 00 00 0A C5 CD
    assert request(1, 3, 0, 10) == bytes.fromhex("01 03 00 00 00 0a c5 cd")


def test_a_unit_answers_its_registers_and_coils() -> None:
    meter = ModbusMeter({"units": [1, 2]}, random.Random(0))
    answer = meter.answer(request(2, 3, 0, 2))
    assert answer == bytes.fromhex("02 03 04 43 66 33 33") + crc(bytes.fromhex("02030443663333"))
    assert meter.answer(request(1, 1, 0, 1))[:4] == bytes.fromhex("01 01 01 01")
    assert meter.answer(request(1, 4, 0, 1))[3:5] == (5000).to_bytes(2, "little")


def test_requests_are_found_in_split_and_noisy_input() -> None:
    meter = ModbusMeter({}, random.Random(0))
    frame = request(1, 3, 0, 2)
    assert meter.answer(b"\xff\x00" + frame[:3]) == b""
    assert meter.answer(frame[3:])[:3] == bytes.fromhex("01 03 04")


def test_silent_absent_and_damaged_requests_get_no_answer_and_bad_addresses_an_exception() -> None:
    meter = ModbusMeter({"units": [1, 2], "silent": [2]}, random.Random(0))
    assert meter.answer(request(2, 3, 0, 2)) == b""
    assert meter.answer(request(9, 3, 0, 2)) == b""
    assert meter.answer(request(1, 3, 0, 2)[:-1] + b"\x00") == b""
    refused = meter.answer(request(1, 3, 50, 1))
    assert refused == bytes.fromhex("01 83 02") + crc(bytes.fromhex("018302"))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"units": [0]}, "units must be a list"), ({"damage": 2}, "damage must be a share")],
)
def test_wrong_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ModbusMeter(options, random.Random(0))
