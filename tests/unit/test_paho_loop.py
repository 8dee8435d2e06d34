"""MQTT's variable byte integer, as `LoopClient` reads it (the spec's table, section 1.5.5)."""

from __future__ import annotations

import pytest
from paho.mqtt.exception import MalformedPacket

from drivers.mqtt.paho_loop import _remaining_length


@pytest.mark.parametrize(
    ("encoded", "value"),
    [
        (b"\x00", 0),
        (b"\x7f", 127),
        (b"\x80\x01", 128),
        (b"\xff\x7f", 16_383),
        (b"\x80\x80\x01", 16_384),
        (b"\xff\xff\x7f", 2_097_151),
        (b"\x80\x80\x80\x01", 2_097_152),
        (b"\xff\xff\xff\x7f", 268_435_455),
    ],
)
def test_variable_byte_integers_of_the_spec(encoded: bytes, value: int) -> None:
    data = b"\x30" + encoded + b"rest"
    assert _remaining_length(data, 1) == (value, 1 + len(encoded))


def test_a_cut_integer_is_not_there_yet() -> None:
    assert _remaining_length(b"\x30\x80\x80", 1) is None
    assert _remaining_length(b"\x30\x80\x01", 1, stop=2) is None  # `stop` ends it first


def test_a_fifth_byte_is_malformed() -> None:
    with pytest.raises(MalformedPacket):
        _remaining_length(b"\x30\x80\x80\x80\x80\x01", 1)
