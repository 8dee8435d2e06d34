"""Encoders for the BLE formats the gateway decodes: what simulated sensors advertise.

Each encoder is the inverse of its decoder in `drivers.ble` and reads the same tables,
so the simulator and the gateway cannot drift apart on a scale or a unit. Values are
keyed by the decoder's value names and given in the decoder's units (temperature in
°C, humidity in %, pressure in hPa, voltage in V, acceleration in m/s2); they are
rounded to the format's resolution. A value the format cannot hold raises ValueError.

`malformed_*` give payloads a broken device might send, for fault scenarios.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from drivers.ble import bthome, ruuvi, xiaomi
from drivers.ble.gatt_formats import SIG_FORMATS

Number = float | int  # bool included: BTHome binary sensors take True/False

DEFAULT_MAC = "A4:C1:38:00:00:01"

BTHOME_IDS: Mapping[str, int] = {
    obj.name: object_id
    for object_id, obj in sorted(bthome.OBJECTS.items(), reverse=True)
    if obj.kind in ("number", "binary") and object_id != bthome.PACKET_ID
}
"""Value name -> the object id the encoder uses: the lowest id of that name (temperature:
0x02, in 0.01 °C), which is the finest-grained one of the common objects."""


def bthome_v2(
    values: Mapping[str, Number],
    packet_id: int | None,
    *,
    bindkey: bytes | None = None,
    address: str | None = None,
    counter: int = 0,
) -> tuple[str, bytes]:
    """BTHome v2 service data: (service UUID, payload) carrying `values` and `packet_id`.

    `values`: names of the number and binary objects of `drivers.ble.bthome.OBJECTS`
    (temperature, humidity, pressure, battery, voltage, motion, ...); objects go out in
    ascending id order, as the spec asks. `packet_id` (0-255) is the object 0x00 that
    receivers deduplicate on; None leaves it out. With `bindkey` (16 bytes) the payload
    is AES-CCM encrypted: `address` ("AA:BB:CC:DD:EE:FF", the advertiser's) and
    `counter` (uint32, increase it per packet) enter the nonce.
    """
    objects = [] if packet_id is None else [bthome.PACKET_ID, packet_id]
    for object_id, value in sorted((_bthome_id(name), value) for name, value in values.items()):
        obj = bthome.OBJECTS[object_id]
        objects.append(object_id)
        raw = _raw(obj.name, value, obj.factor)
        try:
            objects.extend(raw.to_bytes(obj.length, "little", signed=obj.signed))
        except OverflowError:
            raise ValueError(
                f"BTHome {obj.name} {value} does not fit object 0x{object_id:02x}"
            ) from None
    data = bytes(objects)
    if bindkey is None:
        return bthome.SERVICE_UUID, bytes([bthome.VERSION_2]) + data
    if address is None:
        raise ValueError("an encrypted BTHome payload needs the advertiser's address")
    info = bthome.VERSION_2 | bthome.ENCRYPTED
    count = counter.to_bytes(bthome.COUNTER_LEN, "little")
    nonce = bytes.fromhex(address.replace(":", "")) + bthome.UUID16 + bytes([info]) + count
    sealed = AESCCM(bindkey, tag_length=bthome.MIC_LEN).encrypt(nonce, data, None)
    ciphertext, mic = sealed[: -bthome.MIC_LEN], sealed[-bthome.MIC_LEN :]
    return bthome.SERVICE_UUID, bytes([info]) + ciphertext + count + mic


def ruuvi_rawv2(
    values: Mapping[str, Number], measurement_sequence: int | None, *, mac: str = DEFAULT_MAC
) -> tuple[int, bytes]:
    """Ruuvi RAWv2 manufacturer data: (company id 0x0499, payload).

    `values`: temperature, humidity, pressure, acceleration_x/_y/_z, voltage, tx_power,
    movement_counter; a missing one is sent as "not available", as is a None
    `measurement_sequence` (0-65534, the id receivers deduplicate on).
    """
    unknown = set(values) - {
        f.name for f in (*ruuvi.FIELDS, ruuvi.VOLTAGE, ruuvi.TX_POWER, ruuvi.MOVEMENT)
    }
    if unknown:
        raise ValueError(f"Ruuvi RAWv2 has no {sorted(unknown)}")
    fields = [_ruuvi_raw(field, values) for field in ruuvi.FIELDS]
    voltage = _ruuvi_raw(ruuvi.VOLTAGE, values, bits=11)
    tx_power = _ruuvi_raw(ruuvi.TX_POWER, values, bits=5)
    sequence = (
        ruuvi.SEQUENCE_NOT_AVAILABLE if measurement_sequence is None else measurement_sequence
    )
    payload = _pack(
        ruuvi.LAYOUT,
        ruuvi.DATA_FORMAT,
        *fields,
        voltage << 5 | tx_power,  # power info: 11 + 5 bits
        _ruuvi_raw(ruuvi.MOVEMENT, values),
        sequence,
        bytes.fromhex(mac.replace(":", "")),
    )
    return ruuvi.COMPANY_ID, payload


def pvvx(
    values: Mapping[str, Number], counter: int, *, mac: str = DEFAULT_MAC
) -> tuple[str, bytes]:
    """pvvx custom-firmware service data: (UUID 0x181A, 15-byte payload).

    `values`: temperature, humidity, battery (%), voltage (V), all required, and any of
    the flag booleans of `drivers.ble.xiaomi.PVVX_FLAGS` (default False). `counter`
    (0-255) is the measurement count receivers deduplicate on.
    """
    flags = sum(1 << bit for bit, name in enumerate(xiaomi.PVVX_FLAGS) if values.get(name))
    payload = _pack(
        xiaomi.PVVX,
        bytes.fromhex(mac.replace(":", ""))[::-1],
        _raw("temperature", values["temperature"], 0.01),
        _raw("humidity", values["humidity"], 0.01),
        _raw("voltage", values["voltage"], 0.001),
        _raw("battery", values["battery"], 1),
        counter,
        flags,
    )
    return xiaomi.SERVICE_UUID, payload


def atc(values: Mapping[str, Number], counter: int, *, mac: str = DEFAULT_MAC) -> tuple[str, bytes]:
    """atc1441 service data: (UUID 0x181A, 13-byte payload).

    `values`: temperature (0.1 °C steps), humidity (whole %), battery (%), voltage (V),
    all required. `counter` (0-255) is the frame counter receivers deduplicate on.
    """
    payload = _pack(
        xiaomi.ATC,
        bytes.fromhex(mac.replace(":", "")),
        _raw("temperature", values["temperature"], 0.1),
        _raw("humidity", values["humidity"], 1),
        _raw("battery", values["battery"], 1),
        _raw("voltage", values["voltage"], 0.001),
        counter,
    )
    return xiaomi.SERVICE_UUID, payload


def gatt_value(uuid: str, value: Number) -> bytes:
    """The bytes a GATT characteristic of `SIG_FORMATS` holds for `value` (in its unit)."""
    fmt = SIG_FORMATS[uuid]
    return _pack(struct.Struct(fmt.struct), _raw(fmt.name, value, fmt.scale, fmt.offset))


def malformed_bthome_truncated(packet_id: int) -> tuple[str, bytes]:
    """BTHome service data whose temperature object lost its last byte."""
    return bthome.SERVICE_UUID, bytes([bthome.VERSION_2, bthome.PACKET_ID, packet_id, 0x02, 0xCA])


def malformed_bthome_unknown_object(packet_id: int) -> tuple[str, bytes]:
    """BTHome service data that starts with an object id (0xFE) no BTHome table defines.

    After a known object an unknown id only ends the packet (the spec's rule for object
    types newer than the receiver); first in the packet, it leaves nothing to read.
    `packet_id` follows it, unread, only so that consecutive payloads differ.
    """
    return bthome.SERVICE_UUID, bytes([bthome.VERSION_2, 0xFE, 0x01, bthome.PACKET_ID, packet_id])


def malformed_ruuvi_truncated() -> tuple[int, bytes]:
    """Ruuvi manufacturer data cut after the humidity: RAWv2 is always 24 bytes."""
    return ruuvi.COMPANY_ID, bytes.fromhex("0512FC5394")


def _bthome_id(name: str) -> int:
    try:
        return BTHOME_IDS[name]
    except KeyError:
        raise ValueError(f"BTHome has no number or binary object {name!r}") from None


def _ruuvi_raw(field: ruuvi.Field, values: Mapping[str, Number], bits: int = 0) -> int:
    """The raw field for `values[field.name]`, or the field's "not available" value.

    `bits` bounds a field packed into part of a struct field (voltage, tx power); the
    struct bounds the others.
    """
    if field.name not in values:
        return field.not_available
    raw = _raw(field.name, values[field.name], field.factor, field.offset)
    if raw == field.not_available or (bits and not 0 <= raw < 1 << bits):
        raise ValueError(f"Ruuvi {field.name} {values[field.name]} does not fit its field")
    return raw


def _raw(name: str, value: Number, factor: float, offset: float = 0.0) -> int:
    """`value` in steps of `factor` above `offset`, the inverse of `scaled`."""
    return round((value - offset) / factor)


def _pack(layout: struct.Struct, *fields: int | bytes) -> bytes:
    try:
        return layout.pack(*fields)
    except struct.error as exc:
        raise ValueError(f"a value does not fit its field ({exc})") from None
