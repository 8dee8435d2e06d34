"""The BLE driver's advert filter: allow-list, repeats, packet ids, minimum interval, bad input."""

from __future__ import annotations

from typing import Any

import pytest
from edge_gateway_sim import ble_payloads

from drivers.base import DriverStats
from drivers.ble.adverts import Advertisement
from drivers.ble.config import BleDriverConfig
from drivers.ble.filters import AdvertFilter, Heard

ADDRESS = "A4:C1:38:00:00:01"
KEY = bytes(range(16))


def _rules(**options: Any) -> tuple[AdvertFilter, DriverStats]:
    stats = DriverStats(type="ble")
    return AdvertFilter(BleDriverConfig(type="ble", name="radio", **options), stats), stats


def _bthome(packet_id: int, temperature: float = 21.5, **kw: Any) -> Heard:
    uuid, data = ble_payloads.bthome_v2({"temperature": temperature}, packet_id, **kw)
    advert = Advertisement(ADDRESS, "sensor", -60, {uuid: data}, {})
    return Heard(advert, (), 1_700_000_000.0 + packet_id)


def test_a_new_bthome_packet_becomes_a_reading_with_units_tags_and_optional_rssi() -> None:
    rules, _ = _rules(rssi=True)
    reading = rules.reading(_bthome(1))
    assert reading is not None
    assert reading.device == ADDRESS
    assert reading.values == {"temperature": 21.5, "rssi": -60}
    assert reading.units["temperature"] == "Cel" and reading.units["rssi"] == "dBm"
    assert reading.tags == {"address": ADDRESS, "format": "bthome"}
    assert reading.source == "radio"


def test_the_same_payload_again_is_a_property_change_not_a_packet() -> None:
    rules, stats = _rules()
    assert rules.reading(_bthome(1)) is not None
    assert rules.reading(_bthome(1)) is None
    assert stats.counters == {}


def test_a_repeated_packet_id_with_other_bytes_is_dropped_and_counted() -> None:
    rules, stats = _rules()
    assert rules.reading(_bthome(7, 20.0)) is not None
    assert rules.reading(_bthome(7, 20.5)) is None
    assert rules.reading(_bthome(8, 20.5)) is not None
    assert stats.counters["repeated"] == 1


def test_minimum_interval_per_device_drops_packets_in_between() -> None:
    rules, stats = _rules(
        min_interval_s=10, devices=[{"address": ADDRESS, "name": "kitchen", "min_interval_s": 3}]
    )
    kept = [r for r in (rules.reading(_bthome(i)) for i in range(1, 9)) if r is not None]
    assert [r.ts.timestamp() - 1_700_000_000 for r in kept] == [1, 4, 7]
    assert {r.device for r in kept} == {"kitchen"}
    assert stats.counters["throttled"] == 5


def test_allow_list_admits_by_address_name_or_service_uuid_only() -> None:
    rules, _ = _rules(allow={"names": ["sensor"]})
    assert rules.reading(_bthome(1)) is not None
    rules, _ = _rules(allow={"addresses": ["11:22:33:44:55:66"]})
    assert rules.reading(_bthome(1)) is None
    rules, _ = _rules(allow={"service_uuids": ["fcd2"]})
    assert rules.reading(_bthome(1)) is not None


def test_malformed_adverts_are_counted_and_good_ones_still_pass() -> None:
    rules, stats = _rules()
    for packet_id in (1, 2):
        uuid, data = ble_payloads.malformed_bthome_truncated(packet_id)
        bad = Heard(Advertisement(ADDRESS, None, None, {uuid: data}, {}), (), 1.0)
        assert rules.reading(bad) is None
    assert stats.malformed == 2
    assert rules.reading(_bthome(3)) is not None


def test_encrypted_bthome_needs_the_configured_bind_key() -> None:
    heard = _bthome(1, bindkey=KEY, address=ADDRESS, counter=5)
    with_key, _ = _rules(devices=[{"address": ADDRESS, "bindkey": KEY.hex()}])
    reading = with_key.reading(heard)
    assert reading is not None and reading.values == {"temperature": 21.5}
    without, stats = _rules()
    assert without.reading(heard) is None
    assert stats.malformed == 1


def test_unknown_formats_are_counted_not_malformed() -> None:
    rules, stats = _rules()
    other = Heard(Advertisement(ADDRESS, None, None, {}, {0x004C: b"\x02\x15"}), (), 1.0)
    assert rules.reading(other) is None
    assert stats.counters["unknown_format"] == 1 and stats.malformed == 0


def test_a_decoder_bug_is_counted_as_malformed_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(advert: Advertisement, bindkey: bytes | None = None) -> None:
        raise IndexError("a bug in a decoder")

    monkeypatch.setattr("drivers.ble.filters.decode_advertisement", broken)
    rules, stats = _rules()
    assert rules.reading(_bthome(1)) is None
    assert stats.malformed == 1
