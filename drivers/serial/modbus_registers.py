"""Register maps: which reads to send, and how register words become named values.

Pure and table-driven (no I/O): a unit's `RegisterSpec`s are grouped into as few read
requests as the map allows (`plan_blocks`), and each block's words are decoded by
`decode_block` through the `_FORMATS` table. Anything that cannot be a value (a short
answer, a word out of range, a float that is NaN or infinite, which JSON cannot carry
and meters use for "not available") raises `DecodeError` with the words as its sample.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.serial.modbus_config import RegisterKind, RegisterSpec
from gateway.errors import DecodeError
from gateway.model import Value

# The most one request may ask for (Modbus application protocol, functions 1-4).
MAX_REGISTERS = 125
MAX_BITS = 2000

# type -> struct format of the big-endian value (its width comes from RegisterSpec.width).
_FORMATS = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: `count` registers (or bits) of `kind` from `address`, and their values."""

    kind: RegisterKind
    address: int
    count: int
    specs: tuple[RegisterSpec, ...]


def plan_blocks(specs: Sequence[RegisterSpec]) -> tuple[Block, ...]:
    """Group values into read requests: adjacent or overlapping values of one kind share one.

    Only adjacent values are merged, never across a gap: many devices answer a read
    that touches an unmapped register with an exception, which would lose the whole block.
    """
    blocks: list[Block] = []
    ordered = sorted(specs, key=lambda spec: (spec.kind, spec.address))
    for spec in ordered:
        limit = MAX_BITS if spec.kind in ("coil", "discrete") else MAX_REGISTERS
        end = spec.address + spec.width
        if blocks and blocks[-1].kind == spec.kind:
            last = blocks[-1]
            if spec.address <= last.address + last.count and end - last.address <= limit:
                count = max(last.count, end - last.address)
                blocks[-1] = Block(last.kind, last.address, count, (*last.specs, spec))
                continue
        blocks.append(Block(spec.kind, spec.address, spec.width, (spec,)))
    return tuple(blocks)


def decode_block(
    block: Block, data: Sequence[int] | Sequence[bool]
) -> tuple[dict[str, Value], list[DecodeError]]:
    """The values of one block from the words (or bits) its read returned, and an error per
    value that cannot be decoded (one NaN must not cost its neighbours).

    Raises `DecodeError` when the answer does not fit the block at all. Bit reads come
    back padded to a multiple of eight; only the first `count` count.
    """
    if len(data) < block.count or (block.kind in ("holding", "input") and len(data) != block.count):
        raise DecodeError(
            f"{block.kind} read at {block.address} returned {len(data)} items, "
            f"expected {block.count}",
            _sample(data),
        )
    values: dict[str, Value] = {}
    errors: list[DecodeError] = []
    for spec in block.specs:
        start = spec.address - block.address
        try:
            values[spec.name] = decode_value(spec, data[start : start + spec.width])
        except DecodeError as exc:
            errors.append(exc)
    return values, errors


def decode_value(spec: RegisterSpec, data: Sequence[int] | Sequence[bool]) -> Value:
    """One value from its own words (or bit), ordered, scaled and offset as `spec` says."""
    if len(data) != spec.width:
        raise DecodeError(f"{spec.name}: {len(data)} items for a {spec.type}", _sample(data))
    if spec.type == "bool":
        return bool(data[0])
    if any(isinstance(word, bool) or not 0 <= word <= 0xFFFF for word in data):
        raise DecodeError(f"{spec.name}: not a 16-bit register word", _sample(data))
    words = list(data) if spec.word_order == "big" else list(reversed(data))
    raw_bytes = b"".join(int(word).to_bytes(2, spec.byte_order) for word in words)
    raw: int | float = struct.unpack(_FORMATS[spec.type], raw_bytes)[0]
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise DecodeError(f"{spec.name}: float32 is {raw} (not a number)", raw_bytes)
        raw = _shortest_float32(raw, raw_bytes)
    if spec.scale == 1.0 and spec.offset == 0.0:
        return raw
    value = raw * spec.scale + spec.offset
    if not math.isfinite(value):
        raise DecodeError(f"{spec.name}: {raw} * {spec.scale} + {spec.offset} overflows", raw_bytes)
    # 12 significant digits: beyond any register's precision, and 2301 * 0.1 reads 230.1.
    return float(f"{value:.12g}")


def _shortest_float32(raw: float, raw_bytes: bytes) -> float:
    """The shortest decimal that is the same float32: 230.1, not 230.10000610351562."""
    for digits in range(6, 9):
        candidate = float(f"{raw:.{digits}g}")
        if struct.pack(">f", candidate) == raw_bytes:
            return candidate
    return raw


def _sample(data: Sequence[int] | Sequence[bool]) -> bytes:
    """The words as the bytes that carried them (for the log's hex sample)."""
    return b"".join(int(word).to_bytes(2, "big") for word in data if 0 <= int(word) <= 0xFFFF)
