"""Register maps: golden words -> values for every type and order; request planning; fuzzing."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from drivers.serial.modbus_config import RegisterSpec
from drivers.serial.modbus_registers import Block, decode_block, decode_value, plan_blocks
from gateway.errors import DecodeError


def spec(**fields: Any) -> RegisterSpec:
    return RegisterSpec.model_validate({"name": "v", "address": 0, **fields})


# (type, byte_order, word_order, register words as received, value)
GOLDEN = [
    ("uint16", "big", "big", [0x1234], 0x1234),
    ("uint16", "little", "big", [0x3412], 0x1234),
    ("uint16", "big", "big", [0xFFFF], 65535),
    ("int16", "big", "big", [0xFFFE], -2),
    ("int16", "little", "big", [0xFEFF], -2),
    ("int16", "big", "big", [0x7FFF], 32767),
    ("uint32", "big", "big", [0x1122, 0x3344], 0x11223344),
    ("uint32", "big", "little", [0x3344, 0x1122], 0x11223344),
    ("uint32", "little", "big", [0x2211, 0x4433], 0x11223344),
    ("uint32", "little", "little", [0x4433, 0x2211], 0x11223344),
    ("int32", "big", "big", [0xFFFF, 0xFFFD], -3),
    ("int32", "big", "little", [0xFFFD, 0xFFFF], -3),
    ("int32", "little", "big", [0xFFFF, 0xFDFF], -3),
    ("int32", "little", "little", [0xFDFF, 0xFFFF], -3),
    ("int32", "big", "big", [0x8000, 0x0000], -(2**31)),
    ("float32", "big", "big", [0x4148, 0x0000], 12.5),
    ("float32", "big", "little", [0x0000, 0x4148], 12.5),
    ("float32", "little", "big", [0x4841, 0x0000], 12.5),
    ("float32", "little", "little", [0x0000, 0x4841], 12.5),
    ("float32", "big", "big", [0x4366, 0x199A], 230.1),  # shortest decimal of the float32
    ("float32", "big", "big", [0xC2C8, 0x0000], -100.0),
]


@pytest.mark.parametrize(("type_", "byte_order", "word_order", "words", "value"), GOLDEN)
def test_golden_words_decode_to_the_documented_value(
    type_: str, byte_order: str, word_order: str, words: list[int], value: float
) -> None:
    got = decode_value(spec(type=type_, byte_order=byte_order, word_order=word_order), words)
    assert got == value
    assert type(got) is type(value)


def test_scale_and_offset_apply_to_the_raw_value_without_float_noise() -> None:
    assert decode_value(spec(type="uint16", scale=0.1), [2301]) == 230.1
    assert decode_value(spec(type="int16", scale=0.01, offset=-40), [0xFFFF]) == -40.01
    assert decode_value(spec(type="float32", scale=1000), [0x4148, 0x0000]) == 12500.0


def test_bits_decode_to_booleans() -> None:
    coil = spec(kind="coil", type="bool", address=3)
    assert decode_value(coil, [True]) is True
    assert decode_value(coil, [False]) is False


@pytest.mark.parametrize("words", [[0x7FC0, 0x0000], [0x7F80, 0x0000], [0xFF80, 0x0000]])
def test_nan_and_infinity_are_decode_errors_with_the_bytes(words: list[int]) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_value(spec(type="float32"), words)
    assert caught.value.sample == words[0].to_bytes(2, "big") + words[1].to_bytes(2, "big")


def test_a_short_answer_is_a_decode_error() -> None:
    (block,) = plan_blocks([spec(type="float32")])
    with pytest.raises(DecodeError, match="returned 1 items, expected 2"):
        decode_block(block, [0x4148])


def test_adjacent_values_of_one_kind_share_one_request_and_gaps_split() -> None:
    voltage = spec(name="voltage", type="float32", address=0)
    current = spec(name="current", type="float32", address=2)
    energy = spec(name="energy", type="uint32", address=10)
    power = spec(name="power", kind="input", type="int16", address=2)
    relay = spec(name="relay", kind="coil", type="bool", address=0)
    blocks = plan_blocks([energy, relay, current, power, voltage])
    assert blocks == (
        Block("coil", 0, 1, (relay,)),
        Block("holding", 0, 4, (voltage, current)),
        Block("holding", 10, 2, (energy,)),
        Block("input", 2, 1, (power,)),
    )


def test_a_block_decodes_every_value_at_its_offset() -> None:
    voltage = spec(name="voltage", type="float32", address=0, unit="V")
    current = spec(name="current", type="uint16", address=2, scale=0.01, unit="A")
    (block,) = plan_blocks([voltage, current])
    assert decode_block(block, [0x4366, 0x199A, 523]) == (
        {"voltage": 230.1, "current": 5.23},
        [],
    )


def test_a_value_that_cannot_be_decoded_does_not_cost_its_neighbours() -> None:
    voltage = spec(name="voltage", type="float32", address=0)
    current = spec(name="current", type="uint16", address=2)
    (block,) = plan_blocks([voltage, current])
    values, errors = decode_block(block, [0x7FC0, 0x0000, 7])
    assert values == {"current": 7}
    assert [error.sample for error in errors] == [bytes.fromhex("7fc00000")]


def test_requests_stay_within_the_protocol_limit() -> None:
    specs = [spec(name=f"r{i}", type="uint32", address=2 * i) for i in range(100)]
    blocks = plan_blocks(specs)
    assert [block.count for block in blocks] == [124, 76]
    assert sum(len(block.specs) for block in blocks) == 100


def test_bit_reads_ignore_the_padding_to_a_whole_byte() -> None:
    (block,) = plan_blocks([spec(kind="discrete", type="bool", address=5)])
    assert decode_block(block, [True, False, False, False, False, False, False, False]) == (
        {"v": True},
        [],
    )


register_specs = st.builds(
    lambda type_, bo, wo, scale, offset: spec(
        type=type_, byte_order=bo, word_order=wo, scale=scale, offset=offset
    ),
    st.sampled_from(["int16", "uint16", "int32", "uint32", "float32"]),
    st.sampled_from(["big", "little"]),
    st.sampled_from(["big", "little"]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.floats(allow_nan=False, allow_infinity=False),
)


@seed(int(os.environ.get("HYPOTHESIS_SEED", "0")))
@settings(max_examples=2000, deadline=None)
@given(register_specs, st.lists(st.integers(min_value=-(2**17), max_value=2**17), max_size=4))
def test_fuzz_only_decode_errors_escape_and_values_are_finite(
    register: RegisterSpec, words: list[int]
) -> None:
    """Any words (wrong count, out of range) for any spec: a finite value or a DecodeError."""
    try:
        value = decode_value(register, words)
    except DecodeError:
        return
    assert isinstance(value, int | float)
    assert value == value and abs(value) != float("inf")
