"""Advertisements as the gateway sees them, and the dispatch to each format's decoder.

`Advertisement` is the one place bleak's objects are converted from (by the scanner);
`decode_advertisement` is pure: same advertisement and key in, same measurement out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from drivers.ble import bthome, ruuvi, xiaomi
from drivers.ble.measurement import Measurement

__all__ = ["Advertisement", "Measurement", "decode_advertisement"]


@dataclass(frozen=True, slots=True)
class Advertisement:
    """What the scanner saw in one advertisement, converted from bleak's objects in one place."""

    address: str  # "AA:BB:CC:DD:EE:FF", upper case
    name: str | None
    rssi: int | None
    service_data: Mapping[str, bytes]  # full 128-bit UUID, lower case -> payload
    manufacturer_data: Mapping[int, bytes]  # company id -> payload


def decode_advertisement(adv: Advertisement, bindkey: bytes | None = None) -> Measurement | None:
    """None when no known format is present; DecodeError(message, sample) when a known
    format is malformed, or is encrypted and the key is missing or wrong.

    Formats are tried in a fixed order (BTHome, Ruuvi, pvvx/atc1441) and the first one
    present decides: a device sends one format per advertisement. `bindkey` is the
    device's BTHome key (16 bytes); the other formats are not encrypted.
    """
    payload = adv.service_data.get(bthome.SERVICE_UUID)
    if payload is not None:
        return bthome.decode(payload, adv.address, bindkey)
    payload = adv.manufacturer_data.get(ruuvi.COMPANY_ID)
    if payload is not None:
        return ruuvi.decode(payload)
    payload = adv.service_data.get(xiaomi.SERVICE_UUID)
    if payload is not None:
        return xiaomi.decode(payload)
    return None
