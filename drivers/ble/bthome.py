"""BTHome v2 service data (UUID 0xFCD2): the object table and its decoder.

Format: https://bthome.io/format/ (and bthome-ble's `const.py`, whose table this one
follows). Written here rather than depending on bthome-ble, which pulls in PyRIC, a
source build on a Raspberry Pi (see docs/ble-formats.md).

A payload is one device-information byte (bit 0 encrypted, bit 1 MAC included, bit 2
trigger-based, bits 5-7 version), an optional reversed MAC, then objects: an id byte and
a value whose length the id fixes. Objects come in ascending id order, so, as the spec
asks, parsing stops at an id this table does not know (a newer object type, whose length
is unknown) and keeps the objects before it; a packet with nothing known before such an
id is a `DecodeError`. The `Measurement` of a packet cut short names the unknown id:
the driver counts and logs what was lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from drivers.ble.measurement import Measurement, scaled
from gateway.errors import DecodeError
from gateway.model import Value

SERVICE_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
UUID16 = b"\xd2\xfc"  # the service UUID as sent, little-endian: part of the nonce

ENCRYPTED = 0x01
MAC_INCLUDED = 0x02  # "reserved" on bthome.io; bthome-ble and some firmware use it so
VERSION = 2
VERSION_2 = VERSION << 5  # the device-information byte of an unencrypted v2 packet

PACKET_ID = 0x00
COUNTER_LEN = 4  # encryption counter, uint32 little-endian
MIC_LEN = 4  # AES-CCM tag
KEY_LEN = 16  # AES-128


@dataclass(frozen=True, slots=True)
class ObjectType:
    """One row of the object table: how to read an id's value and what to call it.

    `length` 0 means the value carries its own length in its first byte (text, raw).
    `kind` is "number" (`factor` and `signed` apply), "binary" (one byte, 0/1), "button"
    or "dimmer" (events), "text", "raw" (hex string) or "firmware" (a dotted version).
    """

    name: str
    length: int
    signed: bool = False
    factor: float = 1.0
    unit: str = ""
    kind: str = "number"


def _n(
    name: str, length: int, factor: float = 1.0, unit: str = "", signed: bool = False
) -> ObjectType:
    return ObjectType(name, length, signed, factor, unit)


def _b(name: str) -> ObjectType:
    return ObjectType(name, 1, kind="binary")


# Object id -> how to read it. Units are UCUM/SenML codes as in `Reading.units`.
OBJECTS: Mapping[int, ObjectType] = {
    PACKET_ID: _n("packet_id", 1),
    0x01: _n("battery", 1, unit="%"),
    0x02: _n("temperature", 2, 0.01, "Cel", signed=True),
    0x03: _n("humidity", 2, 0.01, "%RH"),
    0x04: _n("pressure", 3, 0.01, "hPa"),
    0x05: _n("illuminance", 3, 0.01, "lx"),
    0x06: _n("mass", 2, 0.01, "kg"),
    0x07: _n("mass", 2, 0.01, "[lb_av]"),
    0x08: _n("dew_point", 2, 0.01, "Cel", signed=True),
    0x09: _n("count", 1),
    0x0A: _n("energy", 3, 0.001, "kWh"),
    0x0B: _n("power", 3, 0.01, "W"),
    0x0C: _n("voltage", 2, 0.001, "V"),
    0x0D: _n("pm25", 2, unit="ug/m3"),
    0x0E: _n("pm10", 2, unit="ug/m3"),
    0x0F: _b("generic"),
    0x10: _b("power_on"),
    0x11: _b("opening"),
    0x12: _n("co2", 2, unit="ppm"),
    0x13: _n("voc", 2, unit="ug/m3"),
    0x14: _n("moisture", 2, 0.01, "%"),
    0x15: _b("battery_low"),
    0x16: _b("battery_charging"),
    0x17: _b("carbon_monoxide"),
    0x18: _b("cold"),
    0x19: _b("connectivity"),
    0x1A: _b("door"),
    0x1B: _b("garage_door"),
    0x1C: _b("gas_detected"),
    0x1D: _b("heat"),
    0x1E: _b("light"),
    0x1F: _b("lock"),
    0x20: _b("moisture_detected"),
    0x21: _b("motion"),
    0x22: _b("moving"),
    0x23: _b("occupancy"),
    0x24: _b("plug"),
    0x25: _b("presence"),
    0x26: _b("problem"),
    0x27: _b("running"),
    0x28: _b("safety"),
    0x29: _b("smoke"),
    0x2A: _b("sound"),
    0x2B: _b("tamper"),
    0x2C: _b("vibration"),
    0x2D: _b("window"),
    0x2E: _n("humidity", 1, unit="%RH"),
    0x2F: _n("moisture", 1, unit="%"),
    0x3A: ObjectType("button", 1, kind="button"),
    0x3C: ObjectType("dimmer", 2, kind="dimmer"),
    0x3D: _n("count", 2),
    0x3E: _n("count", 4),
    0x3F: _n("rotation", 2, 0.1, "deg", signed=True),
    0x40: _n("distance", 2, unit="mm"),
    0x41: _n("distance", 2, 0.1, "m"),
    0x42: _n("duration", 3, 0.001, "s"),
    0x43: _n("current", 2, 0.001, "A"),
    0x44: _n("speed", 2, 0.01, "m/s"),
    0x45: _n("temperature", 2, 0.1, "Cel", signed=True),
    0x46: _n("uv_index", 1, 0.1),
    0x47: _n("volume", 2, 0.1, "L"),
    0x48: _n("volume", 2, unit="mL"),
    0x49: _n("volume_flow_rate", 2, 0.001, "m3/h"),
    0x4A: _n("voltage", 2, 0.1, "V"),
    0x4B: _n("gas", 3, 0.001, "m3"),
    0x4C: _n("gas", 4, 0.001, "m3"),
    0x4D: _n("energy", 4, 0.001, "kWh"),
    0x4E: _n("volume", 4, 0.001, "L"),
    0x4F: _n("water", 4, 0.001, "L"),
    0x50: _n("timestamp", 4, unit="s"),
    0x51: _n("acceleration", 2, 0.001, "m/s2"),
    0x52: _n("gyroscope", 2, 0.001, "deg/s"),
    0x53: ObjectType("text", 0, kind="text"),
    0x54: ObjectType("raw", 0, kind="raw"),
    0x55: _n("volume_storage", 4, 0.001, "L"),
    0x56: _n("conductivity", 2, unit="uS/cm"),
    0x57: _n("temperature", 1, unit="Cel", signed=True),
    0x58: _n("temperature", 1, 0.35, "Cel", signed=True),
    0x59: _n("count", 1, signed=True),
    0x5A: _n("count", 2, signed=True),
    0x5B: _n("count", 4, signed=True),
    0x5C: _n("power", 4, 0.01, "W", signed=True),
    0x5D: _n("current", 2, 0.001, "A", signed=True),
    0x5E: _n("direction", 2, 0.01, "deg"),
    0x5F: _n("precipitation", 2, 0.1, "mm"),
    0x60: _n("channel", 1),
    0x61: _n("rotational_speed", 2, unit="/min"),
    0x62: _n("speed", 4, 0.000001, "m/s", signed=True),
    0x63: _n("acceleration", 4, 0.000001, "m/s2", signed=True),
    0x64: _n("light_level", 1),
    0xF0: _n("device_type_id", 2),
    0xF1: ObjectType("firmware_version", 4, kind="firmware"),
    0xF2: ObjectType("firmware_version", 3, kind="firmware"),
}

BUTTON_EVENTS: Mapping[int, str] = {
    0x00: "none",
    0x01: "press",
    0x02: "double_press",
    0x03: "triple_press",
    0x04: "long_press",
    0x05: "long_double_press",
    0x06: "long_triple_press",
    0x80: "hold_press",
}
_DIMMER_LEFT, _DIMMER_RIGHT = 1, 2


def decode(payload: bytes, address: str, bindkey: bytes | None) -> Measurement:
    """Decode BTHome v2 service data from the device at `address` ("AA:BB:...").

    With `bindkey` set the payload must be encrypted: an unencrypted one from a device
    that has a key is refused, as it may be forged (a "downgrade").
    """
    if not payload:
        raise DecodeError("BTHome service data is empty", payload)
    info = payload[0]
    if info >> 5 != VERSION:
        raise DecodeError(f"BTHome version {info >> 5} is not supported (only v2)", payload)
    body = payload[1:]
    if info & MAC_INCLUDED:
        if len(body) < 6:
            raise DecodeError("BTHome payload too short for its MAC", payload)
        mac, body = body[5::-1], body[6:]
    else:
        mac = _mac_bytes(address, payload)
    counter = None
    if info & ENCRYPTED:
        body, counter = _decrypt(payload, info, mac, body, bindkey)
    elif bindkey is not None:
        raise DecodeError(
            "unencrypted BTHome advertisement from a device with a bind key: ignored"
            " (remove the key if the device no longer encrypts)",
            payload,
        )
    values, units, packet_id, unknown = _objects(body, payload)
    if packet_id is None:
        packet_id = counter
    return Measurement("bthome", values, units, packet_id, counter, unknown)


def _mac_bytes(address: str, payload: bytes) -> bytes:
    try:
        mac = bytes.fromhex(address.replace(":", ""))
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise DecodeError(f"BLE address {address!r} is not a MAC address", payload)
    return mac


def _decrypt(
    payload: bytes, info: int, mac: bytes, body: bytes, bindkey: bytes | None
) -> tuple[bytes, int]:
    """AES-CCM with a 4-byte tag; nonce = MAC + UUID16 + info byte + counter (13 bytes)."""
    if bindkey is None:
        raise DecodeError(
            "encrypted BTHome advertisement: set this device's bind key to read it", payload
        )
    if len(bindkey) != KEY_LEN:
        raise DecodeError(
            f"BTHome bind key must be {KEY_LEN} bytes (32 hex digits), not {len(bindkey)}", payload
        )
    if len(body) < COUNTER_LEN + MIC_LEN:
        raise DecodeError("encrypted BTHome payload too short", payload)
    ciphertext = body[: -COUNTER_LEN - MIC_LEN]
    counter = body[-COUNTER_LEN - MIC_LEN : -MIC_LEN]
    nonce = mac + UUID16 + bytes([info]) + counter
    try:
        plain = AESCCM(bindkey, tag_length=MIC_LEN).decrypt(
            nonce, ciphertext + body[-MIC_LEN:], None
        )
    except InvalidTag:
        raise DecodeError(
            "BTHome advertisement does not decrypt: wrong bind key, or altered in transit", payload
        ) from None
    return plain, int.from_bytes(counter, "little")


def _objects(
    data: bytes, payload: bytes
) -> tuple[dict[str, Value], dict[str, str], int | None, int | None]:
    """Walk the objects; a name seen again gets a suffix (temperature, temperature_2), as
    the spec's "multiple measurements of the same type" does. Also returns the unknown
    object id that cut the walk short, if one did."""
    values: dict[str, Value] = {}
    units: dict[str, str] = {}
    packet_id = None
    i = 0
    while i < len(data):
        object_id = data[i]
        obj = OBJECTS.get(object_id)
        if obj is None:
            if values or packet_id is not None:
                return values, units, packet_id, object_id
            raise DecodeError(f"unknown BTHome object id 0x{object_id:02x} at byte {i}", payload)
        i += 1
        length = obj.length
        if length == 0:
            if i >= len(data):
                raise DecodeError(f"BTHome object 0x{object_id:02x} has no length", payload)
            length = data[i]
            i += 1
        raw = data[i : i + length]
        if len(raw) < length:
            raise DecodeError(f"BTHome object 0x{object_id:02x} is truncated", payload)
        i += length
        if object_id == PACKET_ID:
            packet_id = raw[0]
            continue
        name = obj.name
        n = 2
        while name in values:
            name, n = f"{obj.name}_{n}", n + 1
        values[name] = _value(obj, raw, payload)
        if obj.unit:
            units[name] = obj.unit
    return values, units, packet_id, None


def _value(obj: ObjectType, raw: bytes, payload: bytes) -> Value:
    if obj.kind == "number":
        return scaled(int.from_bytes(raw, "little", signed=obj.signed), obj.factor)
    if obj.kind == "binary":
        if raw[0] > 1:
            raise DecodeError(f"BTHome {obj.name} is {raw[0]}, not 0 or 1", payload)
        return raw[0] == 1
    if obj.kind == "button":
        name = BUTTON_EVENTS.get(raw[0])
        if name is None:
            raise DecodeError(f"unknown BTHome button event 0x{raw[0]:02x}", payload)
        return name
    if obj.kind == "dimmer":  # event (none, left, right) and steps: signed steps, left < 0
        event, steps = raw
        if event not in (0, _DIMMER_LEFT, _DIMMER_RIGHT):
            raise DecodeError(f"unknown BTHome dimmer event 0x{event:02x}", payload)
        return -steps if event == _DIMMER_LEFT else steps if event == _DIMMER_RIGHT else 0
    if obj.kind == "text":
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("BTHome text is not UTF-8", payload) from None
    if obj.kind == "raw":
        return raw.hex()
    return ".".join(str(b) for b in reversed(raw))  # firmware: little-endian, major last
