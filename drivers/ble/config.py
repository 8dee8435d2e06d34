"""Configuration of a Bluetooth LE driver (`type: ble`): an adapter, its scanner, GATT devices."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from drivers.ble.gatt_formats import SIG_FORMATS, CharacteristicFormat
from gateway.config_types import Claim, Name, Seconds, StrictModel

_ADDRESS = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
_SIG_BASE = "-0000-1000-8000-00805f9b34fb"


def _address(value: str) -> str:
    upper = value.strip().upper()
    if not _ADDRESS.match(upper):
        raise ValueError(f"{value!r} is not a Bluetooth address; write it as AA:BB:CC:DD:EE:FF")
    return upper


def _uuid(value: object) -> str:
    """16-bit (`2a6e`) and 32-bit UUIDs become the full 128-bit form bleak reports."""
    if isinstance(value, int):  # YAML reads 12345678 and 0x2A6E as numbers
        raise ValueError(
            f"a UUID was read as a number ({value}, or {value:#x}); put it in quotes as you "
            "wrote it: '2a6e', '12345678'"
        )
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a UUID; write 2a6e, '12345678' or the full form")
    text = value.strip().lower().removeprefix("0x")
    if re.fullmatch(r"[0-9a-f]{4}", text):
        return f"0000{text}{_SIG_BASE}"
    if re.fullmatch(r"[0-9a-f]{8}", text):
        return f"{text}{_SIG_BASE}"
    if re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text):
        return text
    raise ValueError(f"{value!r} is not a UUID; write 2a6e, '12345678' or the full 128-bit form")


def _bindkey(value: object) -> bytes:
    if not isinstance(value, str):  # YAML reads a key of decimal digits as a number
        raise ValueError("the bind key was read as a number; put it in quotes")
    text = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise ValueError("a bind key is 32 hex digits (16 bytes)")
    return bytes.fromhex(text)


Address = Annotated[str, AfterValidator(_address)]
Uuid = Annotated[str, BeforeValidator(_uuid)]
BindKey = Annotated[bytes, BeforeValidator(_bindkey)]
DeviceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$")]


class AllowList(StrictModel):
    """Advertisements pass when any one list matches, or their device is under `devices`.

    An empty `allow` admits every device only when `devices` is empty too; with `devices`
    set, only those pass.
    """

    addresses: list[Address] = Field(default_factory=list)
    names: list[str] = Field(default_factory=list)
    """Exact local names (as advertised)."""
    service_uuids: list[Uuid] = Field(default_factory=list)
    """Matched against advertised service UUIDs and service data UUIDs."""


class KnownDevice(StrictModel):
    """An advertising device with a name of our choosing, an encryption key or its own interval."""

    address: Address
    name: DeviceName | None = None
    """The readings' `device`; default: the address."""
    bindkey: BindKey | None = None
    """Encrypted BTHome: the 16-byte key, 32 hex digits."""
    min_interval_s: Annotated[float, Field(ge=0, le=86_400)] | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class Characteristic(StrictModel):
    """One GATT characteristic: read every `interval_s` and/or subscribe to its notifications.

    SIG characteristics with a known format (2A6E, 2A1F, 2A6F, 2A6D, 2A19) need only their
    UUID; any other needs `value` and `struct` (a Python struct format with a byte order,
    e.g. "<h"); `value`, `unit`, `scale` and `offset` override the SIG defaults.
    """

    uuid: Uuid
    notify: bool = False
    read: bool = True
    """Read at the device's `interval_s` (and once after each connect)."""
    value: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    unit: str | None = None
    struct: str | None = None
    scale: float | None = None
    offset: float | None = None

    @property
    def format(self) -> CharacteristicFormat:
        base = SIG_FORMATS.get(self.uuid)
        if base is None:
            assert self.value is not None and self.struct is not None  # _format_known
            base = CharacteristicFormat(self.value, self.unit or "", self.struct)
        return CharacteristicFormat(
            self.value or base.name,
            base.unit if self.unit is None else self.unit,
            self.struct or base.struct,
            base.scale if self.scale is None else self.scale,
            base.offset if self.offset is None else self.offset,
            base.not_known if self.struct is None else None,
        )

    @model_validator(mode="after")
    def _format_known(self) -> Characteristic:
        if self.uuid not in SIG_FORMATS and (self.value is None or self.struct is None):
            raise ValueError(
                f"characteristic {self.uuid} has no built-in format; "
                "give `value` (its name) and `struct` (e.g. '<h'), optionally unit, scale, offset"
            )
        if not (self.read or self.notify):
            raise ValueError(f"characteristic {self.uuid}: set read or notify (or both)")
        self.format  # noqa: B018  (a bad struct is a ValueError now, not at the first read)
        return self


class GattDevice(StrictModel):
    """A connectable device the driver connects to and keeps connected."""

    address: Address
    name: DeviceName | None = None
    interval_s: Seconds = 60.0
    characteristics: list[Characteristic] = Field(min_length=1)
    connect_timeout_s: Seconds = 20.0
    reconnect_min_s: Seconds = 2.0
    reconnect_max_s: Seconds = 300.0
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct_values(self) -> GattDevice:
        """The characteristics read together make one reading: one name, one value."""
        names = [c.format.name for c in self.characteristics if c.read]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(
                f"two characteristics read the value {twice[0]!r}, and one reading holds it "
                "once; set `value` on one of them to another name"
            )
        return self


class BleDriverConfig(StrictModel):
    """One Bluetooth adapter: a scanner for advertisements, connections to GATT devices."""

    type: Literal["ble"]
    name: Name
    adapter: Annotated[str, Field(pattern=r"^hci[0-9]+$")] = "hci0"
    scanning: Literal["active", "passive"] = "active"
    """passive needs BlueZ's advertisement monitor (bluetoothd --experimental before 5.65)."""
    allow: AllowList = AllowList()
    devices: list[KnownDevice] = Field(default_factory=list)
    min_interval_s: Annotated[float, Field(ge=0, le=86_400)] = 0.0
    """Per device: least time between two readings; advertisements in between are dropped."""
    rssi: bool = False
    """Add the advertisement's signal strength as value `rssi` (dBm)."""
    watchdog_s: Annotated[float, Field(ge=0, le=86_400)] = 120.0
    """No advertisement for this long while devices are expected: recreate the scanner. 0: off."""
    unhealthy_after: Annotated[int, Field(ge=1, le=1000)] = 3
    """Scanner recreations in a row without an advertisement before the adapter is unhealthy."""
    gatt: list[GattDevice] = Field(default_factory=list)

    @property
    def longest_stop_s(self) -> float:
        """Ending a scan (up to 5 s) and a GATT disconnect (up to 10 s), counted as if one came
        after the other (drivers/ble/scanner.py, gatt_client.py)."""
        return 15.0

    @property
    def claims(self) -> tuple[Claim, ...]:
        return (
            Claim(
                "adapter",
                f"the Bluetooth adapter {self.adapter}",
                "BlueZ allows one scan per adapter: merge the two ble drivers into one",
            ),
        )

    def summary(self) -> str:
        """One line for `edge-gateway check`."""
        allow = self.allow
        filters = len(allow.addresses) + len(allow.names) + len(allow.service_uuids)
        return (
            f"ble {self.adapter} ({self.scanning} scan, "
            f"{f'{filters} allow-list entries' if filters else 'all devices'}, "
            f"{len(self.devices)} named, {len(self.gatt)} GATT)"
        )

    @model_validator(mode="after")
    def _distinct_devices(self) -> BleDriverConfig:
        seen: set[str] = set()
        for address in [d.address for d in self.devices] + [g.address for g in self.gatt]:
            if address in seen:
                raise ValueError(f"device {address} is configured twice; give it one entry")
            seen.add(address)
        return self
