"""BLE advertisement decoders against the formats' published examples (golden bytes).

Sources, cited per vector below:
- [bthome-ble] Bluetooth-Devices/bthome-ble, tests/test_parser_v2.py (BTHome v2, incl.
  AES-CCM vectors with bind key 231d39c1d7cc1ab1aee224cd096db932 for 54:48:E6:8F:80:A5).
- [bthome.io/encryption] the spec's worked example (home-assistant/bthome.io,
  src/encryption.html), same key and MAC, counter 1122867.
  (The spec's own sensor tables are in test_ble_bthome_table.py.)
- [ruuvi] docs.ruuvi.com "Data format 5 (RAWv2)", Test vectors (ruuvi/ruuvi-sensor-protocols
  dataformat_05.md); the minimum-values vector as corrected in ruuvi-sensor-protocols#30.
- [ble_monitor] custom-components/ble_monitor, custom_components/ble_monitor/test/
  test_atc_parser.py (pvvx custom and atc1441 formats of pvvx/ATC_MiThermometer); the
  service data is the 0x181A AD structure's payload inside those HCI dumps.
"""

from __future__ import annotations

import pytest

from drivers.ble.adverts import Advertisement, Measurement, decode_advertisement
from gateway.errors import DecodeError

BTHOME = "0000fcd2-0000-1000-8000-00805f9b34fb"
ENV_SENSING = "0000181a-0000-1000-8000-00805f9b34fb"
RUUVI = 0x0499
SHELLY_ADDRESS = "54:48:E6:8F:80:A5"
SHELLY_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
ATC_ADDRESS = "A4:C1:38:8D:18:B2"

TH = {"temperature": "Cel", "humidity": "%RH"}
XIAOMI_UNITS = {"temperature": "Cel", "humidity": "%RH", "battery": "%", "voltage": "V"}
RUUVI_UNITS = {
    "temperature": "Cel",
    "humidity": "%RH",
    "pressure": "hPa",
    "acceleration_x": "m/s2",
    "acceleration_y": "m/s2",
    "acceleration_z": "m/s2",
    "voltage": "V",
    "tx_power": "dBm",
}


def service(uuid: str, hex_payload: str, address: str = ATC_ADDRESS) -> Advertisement:
    return Advertisement(address, None, -60, {uuid: bytes.fromhex(hex_payload)}, {})


def manufacturer(company: int, hex_payload: str) -> Advertisement:
    return Advertisement("CB:B8:33:4C:88:4F", None, -60, {}, {company: bytes.fromhex(hex_payload)})


@pytest.mark.parametrize(
    ("hex_payload", "expected"),
    [
        pytest.param(  # [bthome-ble] test_bthome_temperature_humidity
            "4002ca0903bf13",
            Measurement("bthome", {"temperature": 25.06, "humidity": 50.55}, TH, None),
            id="temperature-humidity",
        ),
        pytest.param(  # [bthome-ble] test_bthome_packet_id_temperature_humidity_battery
            "400009015d025d0903b718",
            Measurement(
                "bthome",
                {"battery": 93, "temperature": 23.97, "humidity": 63.27},
                {"battery": "%", **TH},
                9,
            ),
            id="packet-id-battery-temperature-humidity",
        ),
        pytest.param(  # [bthome-ble] test_bthome_pressure
            "4004138a01",
            Measurement("bthome", {"pressure": 1008.83}, {"pressure": "hPa"}, None),
            id="pressure",
        ),
        pytest.param(  # [bthome-ble] test_bthome_illuminance
            "4005138a14",
            Measurement("bthome", {"illuminance": 13460.67}, {"illuminance": "lx"}, None),
            id="illuminance",
        ),
        pytest.param(  # [bthome-ble] test_bthome_mass_kilograms
            "40065e1f",
            Measurement("bthome", {"mass": 80.3}, {"mass": "kg"}, None),
            id="mass",
        ),
        pytest.param(  # [bthome-ble] test_shelly_blu_ht_display_zb
            "40002e01641e012e34451601",
            Measurement(
                "bthome",
                {"battery": 100, "light": True, "humidity": 52, "temperature": 27.8},
                {"battery": "%", "humidity": "%RH", "temperature": "Cel"},
                46,
            ),
            id="shelly-blu-ht-display",
        ),
        pytest.param(  # [bthome-ble] test_identical_packet_id: a packet id and nothing else
            "400009",
            Measurement("bthome", {}, {}, 9),
            id="packet-id-only",
        ),
        pytest.param(  # [bthome-ble] test_bthome_battery_wrong_object_id_humidity: parsing
            "40015dfe5d0903b718",  # stops at the unknown id 0xFE, keeping what came before
            Measurement("bthome", {"battery": 93}, {"battery": "%"}, None, unknown_object=0xFE),
            id="stops-at-unknown-object",
        ),
        pytest.param(  # [bthome-ble] test_bthome_with_mac: info bit 1, reversed MAC first
            "42b2188d38c1a404138a01",
            Measurement("bthome", {"pressure": 1008.83}, {"pressure": "hPa"}, None),
            id="mac-included",
        ),
    ],
)
def test_bthome_unencrypted_golden(hex_payload: str, expected: Measurement) -> None:
    assert decode_advertisement(service(BTHOME, hex_payload)) == expected


@pytest.mark.parametrize(
    ("hex_payload", "temperature", "counter"),
    [
        ("41a47266c95f730011223378237214", 25.06, 0x33221100),  # [bthome-ble] test_bindkey_correct
        ("41e445f3c9962b332211006c7c4519", 25.06, 1122867),  # [bthome.io/encryption] example
        ("41ba0db07aeef6ffffffff21fd4600", 25.07, 0xFFFFFFFF),  # [bthome-ble] test_reset_encr...
        ("41de40b50e676600000000d7cb95de", 25.07, 0),  # ... and after the counter wrapped
        ("43a5808fe64854f196c06ffb4900112233f08ecbde", 25.06, 0x33221100),  # ..._with_mac_encr...
    ],
)
def test_bthome_encrypted_golden(hex_payload: str, temperature: float, counter: int) -> None:
    """Without a packet id object, the encryption counter is the packet id."""
    measurement = decode_advertisement(service(BTHOME, hex_payload, SHELLY_ADDRESS), SHELLY_KEY)
    assert measurement == Measurement(
        "bthome", {"temperature": temperature, "humidity": 50.55}, TH, counter, counter
    )


@pytest.mark.parametrize(
    ("hex_payload", "address", "bindkey", "message"),
    [
        # [bthome-ble] test_encryption_key_needed / test_bindkey_wrong
        ("41d2fcefe52eb212d600112233bc38c966", ATC_ADDRESS, None, "set this device's bind key"),
        (
            "41d2fcefe52eb212d600112233bc38c966",
            ATC_ADDRESS,
            bytes.fromhex("814aac74c4f17b6c1581e1ab87816b99"),
            "wrong bind key",
        ),
        # [bthome-ble] test_encryption_downgrade_fails: a key set, a clear-text packet
        ("4004138a01", ATC_ADDRESS, SHELLY_KEY, "unencrypted BTHome advertisement"),
        # [bthome-ble] test_incorrect_bindkey_length: 24-byte key
        (
            "41a47266c95f730011223378237214",
            SHELLY_ADDRESS,
            SHELLY_KEY + SHELLY_KEY[:8],
            "must be 16 bytes",
        ),
        # [bthome-ble] test_too_short_encryption_advertisement
        ("41ba0db07aeef600", SHELLY_ADDRESS, SHELLY_KEY, "too short"),
        # [bthome-ble] test_has_incorrect_version: version 7
        ("e102000c0404138a01", ATC_ADDRESS, None, "version 7"),
        # [bthome-ble] test_bthome_wrong_object_id: an unknown id and nothing known before it
        ("40feca09", ATC_ADDRESS, None, "unknown BTHome object id 0xfe"),
        ("4002ca", ATC_ADDRESS, None, "truncated"),
        ("", ATC_ADDRESS, None, "empty"),
    ],
)
def test_bthome_refusals_name_the_cause(
    hex_payload: str, address: str, bindkey: bytes | None, message: str
) -> None:
    payload = bytes.fromhex(hex_payload)
    with pytest.raises(DecodeError, match=message) as caught:
        decode_advertisement(service(BTHOME, hex_payload, address), bindkey)
    assert caught.value.sample == payload[:64]


def test_bthome_cut_off_at_an_unknown_id_keeps_what_came_before_and_names_the_id() -> None:
    """Humidity after the unknown id 0xFF is lost: the measurement says where it stopped."""
    measurement = decode_advertisement(service(BTHOME, "40000102ca09ff0103bf13"))
    assert measurement == Measurement(
        "bthome", {"temperature": 25.06}, {"temperature": "Cel"}, 1, unknown_object=0xFF
    )


def test_bthome_repeated_objects_are_numbered() -> None:
    """Two temperatures in one packet (e.g. a probe and the ambient) keep both values."""
    measurement = decode_advertisement(service(BTHOME, "4002ca0902c409"))
    assert measurement is not None
    assert measurement.values == {"temperature": 25.06, "temperature_2": 25.0}
    assert measurement.units == {"temperature": "Cel", "temperature_2": "Cel"}


def test_bthome_events_text_and_firmware() -> None:
    # button 0x3A press, dimmer 0x3C rotate left 3 steps, text 0x53 "hi", firmware 0xF2 1.2.3
    measurement = decode_advertisement(service(BTHOME, "403a013c010353026869f2030201"))
    assert measurement == Measurement(
        "bthome",
        {"button": "press", "dimmer": -3, "text": "hi", "firmware_version": "1.2.3"},
        {},
        None,
    )


RUUVI_MAC = "CBB8334C884F"


@pytest.mark.parametrize(
    ("hex_payload", "expected"),
    [
        pytest.param(
            "0512FC5394C37C0004FFFC040CAC364200CD" + RUUVI_MAC,
            Measurement(
                "ruuvi",
                {
                    "temperature": 24.3,
                    "humidity": 53.49,
                    "pressure": 1000.44,  # 100044 Pa
                    "acceleration_x": 0.0392266,  # 0.004 g
                    "acceleration_y": -0.0392266,  # -0.004 g
                    "acceleration_z": 10.1596894,  # 1.036 g
                    "voltage": 2.977,
                    "tx_power": 4,
                    "movement_counter": 66,
                },
                RUUVI_UNITS,
                205,
            ),
            id="valid",
        ),
        pytest.param(
            "057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFE" + RUUVI_MAC,
            Measurement(
                "ruuvi",
                {
                    "temperature": 163.835,
                    "humidity": 163.835,
                    "pressure": 1155.34,
                    "acceleration_x": 321.33450055,  # 32.767 g
                    "acceleration_y": 321.33450055,
                    "acceleration_z": 321.33450055,
                    "voltage": 3.646,
                    "tx_power": 20,
                    "movement_counter": 254,
                },
                RUUVI_UNITS,
                65534,
            ),
            id="maximum",
        ),
        pytest.param(
            "058001000000008001800180010000000000" + RUUVI_MAC,
            Measurement(
                "ruuvi",
                {
                    "temperature": -163.835,
                    "humidity": 0.0,
                    "pressure": 500.0,
                    "acceleration_x": -321.33450055,
                    "acceleration_y": -321.33450055,
                    "acceleration_z": -321.33450055,
                    "voltage": 1.6,
                    "tx_power": -40,
                    "movement_counter": 0,
                },
                RUUVI_UNITS,
                0,
            ),
            id="minimum",
        ),
        pytest.param(  # every field "not available": nothing to report, no packet id
            "058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF",
            Measurement("ruuvi", {}, {}, None),
            id="invalid",
        ),
    ],
)
def test_ruuvi_rawv2_golden(hex_payload: str, expected: Measurement) -> None:
    """[ruuvi] the four published test vectors."""
    assert decode_advertisement(manufacturer(RUUVI, hex_payload)) == expected


@pytest.mark.parametrize(
    ("hex_payload", "message"),
    [
        ("0512FC5394", "24 bytes"),
        ("0512FC5394C37C0004FFFC040CAC364200CD" + RUUVI_MAC + "00", "24 bytes"),
        ("03291A1ECE1EFC18F94202CA0B53", "format 3 is not supported"),  # [ruuvi] RAWv1 vector
        ("", "empty"),
    ],
)
def test_ruuvi_refusals_name_the_cause(hex_payload: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_advertisement(manufacturer(RUUVI, hex_payload))


PVVX_FLAGS_0D = {
    "reed_switch": True,
    "trigger_output": False,
    "trigger_controlled": True,
    "temperature_trigger": True,
    "humidity_trigger": False,
}


@pytest.mark.parametrize(
    ("hex_payload", "expected"),
    [
        pytest.param(  # [ble_monitor] test_atc_atc1441
            "a4c1380283f400a22f5f0bf819",
            Measurement(
                "atc",
                {"temperature": 16.2, "humidity": 47, "battery": 95, "voltage": 3.064},
                XIAOMI_UNITS,
                25,
            ),
            id="atc1441",
        ),
        pytest.param(  # [ble_monitor] test_atc_atc1441_ext
            "a4c138bc7c4e0102284f0b6720",
            Measurement(
                "atc",
                {"temperature": 25.8, "humidity": 40, "battery": 79, "voltage": 2.919},
                XIAOMI_UNITS,
                32,
            ),
            id="atc1441-extended",
        ),
        pytest.param(  # [ble_monitor] test_atc_custom
            "f4830238c1a4a9066911b60b58f70d",
            Measurement(
                "pvvx",
                {"temperature": 17.05, "humidity": 44.57, "battery": 88, "voltage": 2.998}
                | PVVX_FLAGS_0D,
                XIAOMI_UNITS,
                247,
            ),
            id="pvvx",
        ),
        pytest.param(  # [ble_monitor] test_atc_custom_ext
            "8b376338c1a4ce0913107f0b521204",
            Measurement(
                "pvvx",
                {"temperature": 25.1, "humidity": 41.15, "battery": 82, "voltage": 2.943}
                | dict.fromkeys(PVVX_FLAGS_0D, False)
                | {"trigger_controlled": True},
                XIAOMI_UNITS,
                18,
            ),
            id="pvvx-extended",
        ),
    ],
)
def test_xiaomi_custom_firmware_golden(hex_payload: str, expected: Measurement) -> None:
    assert decode_advertisement(service(ENV_SENSING, hex_payload)) == expected


def test_pvvx_encrypted_format_is_refused() -> None:
    # [ble_monitor] test_atc_custom_encrypted: 11 bytes of pvvx's encrypted custom format
    with pytest.raises(DecodeError, match="encrypted pvvx formats are not supported"):
        decode_advertisement(service(ENV_SENSING, "11d603fbfa7b6dfb1e26fd"))


def test_unknown_advertisements_are_none() -> None:
    apple = Advertisement("11:22:33:44:55:66", "phone", -70, {}, {0x004C: b"\x02\x15"})
    assert decode_advertisement(apple) is None
    other = service("0000feaa-0000-1000-8000-00805f9b34fb", "00")  # Eddystone
    assert decode_advertisement(other) is None
