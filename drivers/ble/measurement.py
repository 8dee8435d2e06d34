"""What a BLE decoder returns, and the scaling every format shares.

Kept apart from `adverts` so the per-format modules can build a `Measurement` without
importing the dispatcher that imports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache

from gateway.model import Value


@dataclass(frozen=True, slots=True)
class Measurement:
    """The values one advertisement carried, named and with units, equal by value.

    `values` may be empty: a BTHome packet that only carries its packet id, or a Ruuvi
    packet whose every field says "not available"; the driver makes no reading of it.
    `packet_id` is the sender's counter (BTHome packet id, else the encryption counter;
    Ruuvi measurement sequence; pvvx/ATC measurement counter): advertisements that repeat
    one measurement share it, so the driver drops a packet whose id equals the device's
    previous one. None when the format carries no counter.
    `encryption_counter` is the 32-bit counter of a decrypted BTHome packet: the driver
    refuses one that did not increase (replay protection, bthome.io/encryption).
    `unknown_object` is the BTHome object id, newer than this gateway, at which decoding
    stopped: the values after it were lost (the driver counts and logs it).
    """

    format: str  # "bthome" | "ruuvi" | "pvvx" | "atc"
    values: Mapping[str, Value]
    units: Mapping[str, str] = field(default_factory=dict)
    packet_id: int | None = None
    encryption_counter: int | None = None
    unknown_object: int | None = None


def scaled(raw: int | float, factor: float = 1.0, offset: float = 0.0) -> int | float:
    """`raw * factor + offset`; a fixed-point `raw` (an int) rounded to the factor's resolution.

    Rounding keeps a golden test exact (2506 * 0.01 is 25.060000000000002 in binary
    floating point, the device meant 25.06); an integer stays an integer when the
    scaling cannot make it fractional. A float `raw` keeps its own precision.
    """
    value = raw * factor + offset
    if isinstance(raw, float):
        return value
    digits = _decimals(factor, offset)
    return int(value) if digits == 0 else round(value, digits)


@cache
def _decimals(factor: float, offset: float) -> int:
    """Digits after the point that `factor` and `offset` can produce (0.005 -> 3)."""
    exponents = (Decimal(repr(x)).normalize().as_tuple().exponent for x in (factor, offset))
    return max(0, *(-e for e in exponents if isinstance(e, int)))
