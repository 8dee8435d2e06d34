"""From advertisements to readings: allow-list, repeat and rate filters, decoding, counting.

No I/O here and nothing bleak-specific beyond the conversion in `from_bleak`, so the rules
(what passes, what is a repeat, what is counted as malformed) are tested without a radio.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from drivers.base import DriverStats
from drivers.ble.adverts import Advertisement, decode_advertisement
from drivers.ble.config import BleDriverConfig, KnownDevice
from drivers.ble.measurement import Measurement
from gateway.errors import DecodeError
from gateway.logs import RateLimitedLog
from gateway.model import Reading, Value, utc_from_epoch

log = structlog.get_logger("drivers.ble")

_MAX_DEVICES = 4096
"""Devices whose last packet is remembered (the least recently heard is forgotten first);
bounded, since private addresses keep changing."""


@dataclass(frozen=True, slots=True)
class Heard:
    """One advertisement as the scanner delivered it, with its receive time (epoch seconds)."""

    advert: Advertisement
    service_uuids: tuple[str, ...]
    received: float


def from_bleak(address: str, data: Any, received: float) -> Heard:
    """Convert bleak's `AdvertisementData` (the one place that knows its shape)."""
    rssi = data.rssi if isinstance(data.rssi, int) and data.rssi > -127 else None
    advert = Advertisement(
        address=address.upper(),
        name=data.local_name,
        rssi=rssi,
        service_data={k.lower(): bytes(v) for k, v in data.service_data.items()},
        manufacturer_data={int(k): bytes(v) for k, v in data.manufacturer_data.items()},
    )
    return Heard(advert, tuple(u.lower() for u in data.service_uuids), received)


@dataclass(slots=True)
class _DeviceState:
    payload: tuple[Any, ...] | None = None
    packet_id: int | None = None
    last_reading: float | None = None


@dataclass(slots=True)
class AdvertFilter:
    """The per-device memory that turns a stream of advertisements into readings.

    bleak calls back on every change of a device's D-Bus properties (RSSI, Connected, ...),
    and BlueZ repeats the last advertising data in each call. A payload equal to the
    device's previous one is therefore not a new packet; a decoded packet id equal to the
    previous one is the sender repeating a measurement. Both are dropped, the second counted.

    That memory is kept for the `_MAX_DEVICES` devices heard most recently, and only for
    devices whose advertisement decoded: phones and beacons in other formats, each with
    a new private address every few minutes, never push a sensor's memory out (a sensor
    that lost it would turn its next repeat into a second reading). The cost: an
    undecodable advertisement is counted each time bleak calls back with it.

    Encrypted BTHome has replay protection (bthome.io/encryption): a device with a bind
    key must send an encryption counter above the last one accepted, or the packet is
    refused and counted as `replayed`. These counters are kept apart from the evicted
    memory (one per configured bind key, so bounded by the configuration), and only in
    memory: docs/ble-formats.md says what that means after a sensor's battery change.
    """

    config: BleDriverConfig
    stats: DriverStats
    _devices: OrderedDict[str, _DeviceState] = field(default_factory=OrderedDict)
    _counters: dict[str, int] = field(default_factory=dict)
    _known: Mapping[str, KnownDevice] = field(default_factory=dict)
    _rate_limited: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log))

    def __post_init__(self) -> None:
        self._known = {device.address: device for device in self.config.devices}

    def allowed(self, heard: Heard) -> bool:
        allow = self.config.allow
        advert = heard.advert
        if not (allow.addresses or allow.names or allow.service_uuids or self._known):
            return True
        return (
            advert.address in self._known
            or advert.address in allow.addresses
            or (advert.name is not None and advert.name in allow.names)
            or any(u in allow.service_uuids for u in (*heard.service_uuids, *advert.service_data))
        )

    def reading(self, heard: Heard) -> Reading | None:
        """The reading of a new packet from an allowed device, or None (counted why)."""
        advert = heard.advert
        if not self.allowed(heard):
            return None
        payload = (tuple(advert.service_data.items()), tuple(advert.manufacturer_data.items()))
        if payload == ((), ()):
            return None  # a property change of a device that sent no data
        state = self._devices.get(advert.address)
        if state is not None:
            self._devices.move_to_end(advert.address)
            if payload == state.payload:
                return None  # a property change, not a packet
            state.payload = payload
        known = self._known.get(advert.address)
        try:
            measurement = decode_advertisement(advert, known.bindkey if known else None)
        except Exception as exc:  # a decoder bug must not stop the filter: count it like bad input
            self._malformed(advert, exc)
            return None
        if measurement is None:
            self.stats.bump("unknown_format")
            return None
        if self._replayed(advert, measurement):
            return None
        if state is None:
            state = self._remember(advert.address, payload)
        if measurement.packet_id is not None and measurement.packet_id == state.packet_id:
            self.stats.bump("repeated")
            return None
        state.packet_id = measurement.packet_id
        if measurement.unknown_object is not None:
            self._cut_off(advert, measurement)
        min_interval = self.config.min_interval_s
        if known is not None and known.min_interval_s is not None:
            min_interval = known.min_interval_s
        since = None if state.last_reading is None else heard.received - state.last_reading
        if since is not None and 0 <= since < min_interval:  # < 0: the clock was stepped back
            self.stats.bump("throttled")
            return None
        if not measurement.values:
            return None
        state.last_reading = heard.received
        values: dict[str, Value] = dict(measurement.values)
        units = dict(measurement.units)
        if self.config.rssi and advert.rssi is not None:
            values["rssi"] = advert.rssi
            units["rssi"] = "dBm"
        tags = {"address": advert.address, "format": measurement.format}
        return Reading(
            device=known.name if known and known.name else advert.address,
            ts=utc_from_epoch(heard.received),
            values=values,
            source=self.config.name,
            units=units,
            tags={**tags, **(known.tags if known else {})},
        )

    def _remember(self, address: str, payload: tuple[Any, ...]) -> _DeviceState:
        """New memory for a device, forgetting the least recently heard one when full."""
        if len(self._devices) >= _MAX_DEVICES:
            self._devices.popitem(last=False)
        state = self._devices[address] = _DeviceState(payload)
        return state

    def _replayed(self, advert: Advertisement, measurement: Measurement) -> bool:
        """Refuse a decrypted packet whose counter is not above the device's last one.

        Only a packet decrypted with the device's bind key has a counter, so the
        counters stay as many as the configured keys.
        """
        counter = measurement.encryption_counter
        if counter is None:
            return False
        last = self._counters.get(advert.address)
        if last is not None and counter <= last:
            self.stats.bump("replayed")
            self._rate_limited.warning(
                "replayed",
                "replayed BLE advertisement: its encryption counter did not increase; skipped",
                driver=self.config.name,
                address=advert.address,
                counter=counter,
                last_counter=last,
                hint="after the sensor's battery was changed, restart the gateway "
                "(docs/ble-formats.md, replay protection)",
            )
            return True
        self._counters[advert.address] = counter
        return False

    def _cut_off(self, advert: Advertisement, measurement: Measurement) -> None:
        self.stats.bump("cut_off")
        self._rate_limited.warning(
            f"cut-off:{measurement.unknown_object}",
            "BTHome packet cut off at an unknown object id; kept the values before it",
            driver=self.config.name,
            address=advert.address,
            object_id=f"0x{measurement.unknown_object:02x}",
            kept=sorted(measurement.values),
            hint="an object type newer than this gateway (bthome.io/format lists them): "
            "update the gateway to read the values after it",
        )

    def _malformed(self, advert: Advertisement, exc: Exception) -> None:
        if isinstance(exc, DecodeError):
            sample = exc.sample
        else:
            log.exception("BLE decoder failed on an advertisement", address=advert.address)
            sample = next(iter(advert.service_data.values()), b"") or next(
                iter(advert.manufacturer_data.values()), b""
            )
        self.stats.malformed += 1
        self._rate_limited.warning(
            "malformed",  # one key: private addresses change, a key each would flood the log
            "malformed BLE advertisement; skipped",
            driver=self.config.name,
            address=advert.address,
            error=f"{type(exc).__name__}: {exc}",
            sample_hex=sample[:64].hex(),
        )
