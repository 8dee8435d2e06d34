"""GATT characteristic values: the common Bluetooth SIG formats, and an escape hatch.

A characteristic's value is one little-endian number scaled to its unit (GATT
Specification Supplement, section 3). `SIG_FORMATS` holds the common ones; any other
device is served by a `CharacteristicFormat` built from configuration: a `struct` format
string, a scale and an offset.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from drivers.ble.measurement import scaled
from gateway.errors import DecodeError

_BYTE_ORDERS = "<>!="


@dataclass(frozen=True, slots=True)
class CharacteristicFormat:
    """How to read one characteristic: value = unpacked * scale + offset, rounded to scale.

    `struct` must name a byte order (GATT is little-endian: "<h", "<I", "<f") and hold
    exactly one number. `not_known` is the raw value the SIG reserves for "value is not
    known" (0x8000 for temperature), which decodes to a `DecodeError`, not a reading.
    Raises ValueError at construction for a struct that cannot work, so configuration
    fails at load time rather than at the first notification.
    """

    name: str
    unit: str
    struct: str
    scale: float = 1.0
    offset: float = 0.0
    not_known: int | None = None

    def __post_init__(self) -> None:
        if not self.struct or self.struct[0] not in _BYTE_ORDERS:
            raise ValueError(
                f"struct {self.struct!r} must start with a byte order: '<' for GATT's little-endian"
            )
        try:
            fields = struct.unpack(self.struct, bytes(struct.calcsize(self.struct)))
        except struct.error as exc:
            raise ValueError(f"struct {self.struct!r} is not a struct format ({exc})") from None
        if (
            len(fields) != 1
            or not isinstance(fields[0], int | float)
            or isinstance(fields[0], bool)
        ):
            raise ValueError(f"struct {self.struct!r} must hold exactly one number")

    def decode(self, data: bytes) -> float | int:
        """The value in `unit`; DecodeError on a wrong length or a "not known" value."""
        size = struct.calcsize(self.struct)
        if len(data) != size:
            raise DecodeError(f"{self.name}: expected {size} bytes, got {len(data)}", data)
        (raw,) = struct.unpack(self.struct, data)
        if raw == self.not_known:
            raise DecodeError(f"{self.name}: the device reports the value as not known", data)
        value = scaled(raw, self.scale, self.offset)
        if not math.isfinite(value):  # a float struct's NaN or infinity
            raise DecodeError(f"{self.name}: the value is {value}, not a finite number", data)
        return value


def sig_uuid(short: int) -> str:
    """The full 128-bit UUID of a 16-bit SIG UUID, as bleak spells it (lower case)."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


SIG_FORMATS: Mapping[str, CharacteristicFormat] = {
    sig_uuid(0x2A6E): CharacteristicFormat("temperature", "Cel", "<h", 0.01, not_known=-0x8000),
    sig_uuid(0x2A1F): CharacteristicFormat("temperature", "Cel", "<h", 0.1),
    sig_uuid(0x2A6F): CharacteristicFormat("humidity", "%RH", "<H", 0.01, not_known=0xFFFF),
    sig_uuid(0x2A6D): CharacteristicFormat("pressure", "hPa", "<I", 0.001),  # 0.1 Pa
    sig_uuid(0x2A19): CharacteristicFormat("battery", "%", "<B"),
    sig_uuid(0x2A7B): CharacteristicFormat("dew_point", "Cel", "<b"),
    sig_uuid(0x2A76): CharacteristicFormat("uv_index", "", "<B"),
}
"""Key: the characteristic's full 128-bit UUID, lower case, as bleak reports it."""
