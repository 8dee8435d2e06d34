"""The BLE driver's advert filter: allow-list, repeats, packet ids, minimum interval, bad input;
and what it counts when the buffer refuses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from edge_gateway_sim import ble_payloads
from structlog.testing import capture_logs

from drivers.base import DriverStats
from drivers.ble.adverts import Advertisement
from drivers.ble.config import BleDriverConfig
from drivers.ble.filters import AdvertFilter, Heard
from drivers.ble.source import BleSource
from gateway.model import Reading

ADDRESS = "A4:C1:38:00:00:01"
BTHOME = "0000fcd2-0000-1000-8000-00805f9b34fb"
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


def test_a_clock_stepped_back_does_not_throttle_every_packet() -> None:
    rules, stats = _rules()  # min_interval_s 0: every new packet is a reading
    assert rules.reading(_bthome(1)) is not None
    hour_back = [replace(_bthome(i), received=1_700_000_000.0 - 3600 + i) for i in range(2, 6)]
    assert all(rules.reading(heard) is not None for heard in hour_back)
    assert stats.counters.get("throttled", 0) == 0


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


def test_a_packet_cut_off_at_an_unknown_object_is_read_counted_and_logged() -> None:
    rules, stats = _rules()
    packets = [bytes.fromhex(f"40 00{i:02x} 02ca09 ff0103 bf13") for i in (1, 2)]  # 0xff: unknown
    with capture_logs() as logs:
        readings = [
            rules.reading(Heard(Advertisement(ADDRESS, None, -60, {BTHOME: p}, {}), (), float(i)))
            for i, p in enumerate(packets)
        ]
    assert [r.values if r else None for r in readings] == [{"temperature": 25.06}] * 2
    assert stats.counters["cut_off"] == 2
    [line] = [x for x in logs if x["log_level"] == "warning"]  # rate-limited: once per id
    assert line["event"].startswith("BTHome packet cut off at an unknown object id")
    assert (line["object_id"], line["kept"], line["address"]) == ("0xff", ["temperature"], ADDRESS)
    assert "update the gateway" in line["hint"]


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


def _sensor(address: str, packet_id: int, temperature: float = 21.5, **kw: Any) -> Heard:
    uuid, data = ble_payloads.bthome_v2({"temperature": temperature}, packet_id, **kw)
    return Heard(Advertisement(address, None, -60, {uuid: data}, {}), (), 1_700_000_000.0)


def _encrypted(packet_id: int, counter: int, temperature: float = 21.5) -> Heard:
    return _bthome(packet_id, temperature, bindkey=KEY, address=ADDRESS, counter=counter)


def test_an_encrypted_packet_replayed_later_is_refused_and_counted() -> None:
    rules, stats = _rules(devices=[{"address": ADDRESS, "bindkey": KEY.hex()}])
    first, second = _encrypted(1, counter=5), _encrypted(2, counter=6)
    later = second.received + 60  # recorded, and sent again a minute later
    assert rules.reading(first) is not None
    assert rules.reading(second) is not None
    with capture_logs() as logs:
        assert rules.reading(replace(first, received=later)) is None  # an older counter
        assert rules.reading(_encrypted(3, counter=6, temperature=30.0)) is None  # not newer
    assert stats.counters["replayed"] == 2
    assert [log["counter"] for log in logs if log["event"].startswith("replayed")] == [5]
    assert rules.reading(_encrypted(4, counter=7)) is not None


def test_the_last_encryption_counter_outlives_the_evicted_per_device_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("drivers.ble.filters._MAX_DEVICES", 2)
    rules, stats = _rules(
        allow={"service_uuids": ["fcd2"]}, devices=[{"address": ADDRESS, "bindkey": KEY.hex()}]
    )
    old, new = _encrypted(1, counter=5), _encrypted(2, counter=6)
    assert rules.reading(old) is not None and rules.reading(new) is not None
    for n in range(3):  # other sensors push the encrypted one's state out
        assert rules.reading(_sensor(f"A4:C1:38:00:01:0{n}", 1)) is not None
    assert rules.reading(replace(old, received=new.received + 60)) is None
    assert stats.counters["replayed"] == 1


def test_passing_phones_do_not_push_out_a_live_sensors_state() -> None:
    rules, stats = _rules()
    assert rules.reading(_bthome(7, 20.0)) is not None
    for n in range(5_000):  # phones and beacons in an unknown format, each with a new address
        phone = f"4C:00:00:{n >> 16 & 255:02X}:{n >> 8 & 255:02X}:{n & 255:02X}"
        beacon = {0x004C: bytes([2, 21, n & 255])}
        assert rules.reading(Heard(Advertisement(phone, None, -80, {}, beacon), (), 1.0)) is None
    assert rules.reading(_bthome(7, 20.5)) is None  # the sensor repeating packet 7
    assert stats.counters["repeated"] == 1


def test_the_least_recently_heard_device_is_forgotten_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("drivers.ble.filters._MAX_DEVICES", 2)
    rules, stats = _rules()
    live, quiet, new = ADDRESS, "A4:C1:38:00:00:02", "A4:C1:38:00:00:03"
    assert rules.reading(_sensor(live, 1)) is not None
    assert rules.reading(_sensor(quiet, 1)) is not None
    assert rules.reading(_sensor(live, 2)) is not None  # heard again: now the most recent
    assert rules.reading(_sensor(new, 1)) is not None  # forgets `quiet`, not `live`
    assert rules.reading(_sensor(live, 2, temperature=22.0)) is None
    assert stats.counters["repeated"] == 1


def test_malformed_adverts_from_many_addresses_log_once_and_keep_memory_flat() -> None:
    rules, stats = _rules()
    with capture_logs() as logs:
        for n in range(5_000):  # a random private address each time
            address = f"7A:00:00:{n >> 16 & 255:02X}:{n >> 8 & 255:02X}:{n & 255:02X}"
            uuid, data = ble_payloads.malformed_bthome_truncated(n & 255)
            bad = Heard(Advertisement(address, None, None, {uuid: data}, {}), (), 1.0)
            assert rules.reading(bad) is None
    assert stats.malformed == 5_000
    warnings = [log for log in logs if log["event"].startswith("malformed")]
    assert len(warnings) == 1 and warnings[0]["address"] == "7A:00:00:00:00:00"
    assert len(rules._rate_limited._last) == 1


async def test_readings_dropped_while_the_buffer_refuses_are_counted_one_each() -> None:
    """The outbox takes a batch whole or not at all: a refused batch of 20 is 20 dropped."""
    source = BleSource(BleDriverConfig(type="ble", name="radio"), "gw", sink=_Unused())
    one = _rules()[0].reading(_bthome(1))
    assert one is not None
    assert source.outbox.add([one] * source.outbox.limit)  # full: the buffer refused for long
    source._emit([one] * 20)  # what a GATT poller hands over
    assert source.stats.counters["inbox_overflow"] == 20


class _Unused:
    async def put(self, readings: Sequence[Reading]) -> None:
        raise AssertionError("nothing is delivered in this test")
