"""`type: ble` configuration: what loads, how it is normalised, and what a typo says."""

from __future__ import annotations

from pathlib import Path

import pytest
from example_config import EXAMPLE, example_with

from drivers.ble.config import BleDriverConfig
from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigError


def _load(tmp_path: Path, driver: str) -> BleDriverConfig:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"gateway: {{id: gw}}\ndrivers:\n  - type: ble\n    name: radio\n{driver}")
    config = load_config(path).drivers[0]
    assert isinstance(config, BleDriverConfig)
    return config


def _error(tmp_path: Path, driver: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, driver)
    return str(info.value)


def test_the_example_configuration_checks_and_summarises_its_ble_driver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(EXAMPLE)]) == 0
    assert main(["check", "--config", str(example_with("ble", tmp_path))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  driver   ble: ble hci0 (active scan, 3 allow-list entries, 1 named, 1 GATT)" in lines


def test_addresses_uuids_and_bind_keys_are_normalised(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """\
    allow: {addresses: [c7:11:22:33:44:55], service_uuids: ['0xFCD2', 181a]}
    devices: [{address: a4:c1:38:00:00:02, bindkey: 231D39C1D7CC1AB1AEE224CD096DB932}]
""",
    )
    assert config.allow.addresses == ["C7:11:22:33:44:55"]
    assert config.allow.service_uuids == [
        "0000fcd2-0000-1000-8000-00805f9b34fb",
        "0000181a-0000-1000-8000-00805f9b34fb",
    ]
    assert config.devices[0].bindkey == bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")


def test_a_gatt_characteristic_takes_its_sig_format_or_a_configured_one(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """\
    gatt:
      - address: EE:00:00:00:00:01
        characteristics:
          - {uuid: 2a6e, notify: true}
          - {uuid: "12345678", value: co2, unit: ppm, struct: "<H"}
""",
    )
    temperature, co2 = (c.format for c in config.gatt[0].characteristics)
    assert (temperature.name, temperature.unit, temperature.decode(b"\x2a\x09")) == (
        "temperature",
        "Cel",
        23.46,
    )
    assert (co2.name, co2.unit, co2.decode(b"\x90\x01")) == ("co2", "ppm", 400)


@pytest.mark.parametrize(
    ("driver", "expected"),
    [
        ("    allow: {addresses: [AA:BB:CC]}\n", "not a Bluetooth address; write it as"),
        ("    devices: [{address: AA:BB:CC:DD:EE:FF, bindkey: abc}]\n", "32 hex digits"),
        ("    allow: {service_uuids: [xyz]}\n", "is not a UUID; write 2a6e"),
        (
            "    allow: {service_uuids: [0xfcd2]}\n",
            "a UUID was read as a number (64722, or 0xfcd2); put it in quotes as you wrote it",
        ),
        (
            "    devices: [{address: AA:BB:CC:DD:EE:FF,"
            " bindkey: 12345678901234567890123456789012}]\n",
            "the bind key was read as a number; put it in quotes",
        ),
        (
            "    devices: [{address: AA:BB:CC:DD:EE:FF}]\n"
            "    gatt: [{address: aa:bb:cc:dd:ee:ff, characteristics: [{uuid: 2a19}]}]\n",
            "device AA:BB:CC:DD:EE:FF is configured twice",
        ),
        (
            "    gatt: [{address: AA:BB:CC:DD:EE:FF, characteristics: [{uuid: 1234abcd}]}]\n",
            "has no built-in format; give `value` (its name) and `struct`",
        ),
        (
            "    gatt: [{address: AA:BB:CC:DD:EE:FF, characteristics: "
            "[{uuid: 1234abcd, value: x, struct: h}]}]\n",
            "must start with a byte order",
        ),
        (
            "    gatt: [{address: AA:BB:CC:DD:EE:FF, characteristics: "
            "[{uuid: 2a6e}, {uuid: 1234abcd, value: temperature, struct: <h}]}]\n",
            "two characteristics read the value 'temperature'",  # one would overwrite the other
        ),
        ("    scaning: passive\n", "did you mean 'scanning'?"),
    ],
)
def test_configuration_mistakes_say_where_and_what_to_write(
    tmp_path: Path, driver: str, expected: str
) -> None:
    message = _error(tmp_path, driver)
    assert "gateway.yaml:" in message and "drivers[0]" in message
    assert expected in message
