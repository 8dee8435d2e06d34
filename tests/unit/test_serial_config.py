"""Serial driver configuration: the nested `type`/`protocol` choice and its one-line errors."""

from __future__ import annotations

import errno
import re
from pathlib import Path
from textwrap import dedent

import pytest
import serial
import yaml
from example_config import EXAMPLE, example_with
from serial.tools.list_ports_common import ListPortInfo

from drivers.serial.lines_config import SerialLinesConfig
from drivers.serial.nmea_config import SerialNmeaConfig
from drivers.serial.port_config import PARITY, SerialPortConfig, UsbMatch
from drivers.serial.ports import describe_open_error, usb_matches
from gateway.cli import main
from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError


def _load(tmp_path: Path, drivers: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text("gateway: {id: gw}\ndrivers:\n" + dedent(drivers))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).replace(f"{path}:", "FILE:")


def test_lines_and_nmea_items_load_into_their_own_models(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        dedent(
            """\
            gateway: {id: gw}
            drivers:
              - type: serial
                name: arduino
                protocol: lines
                port: /dev/serial/by-id/usb-Arduino*
                format: csv
                columns: [{name: temperature, unit: Cel}, {name: humidity, unit: "%RH"}]
                command: 'READ\\r\\n'
                poll_interval_s: 5
              - type: serial
                name: gps
                protocol: nmea
                usb: {vendor_id: "067B", product_id: "2303"}
                stopbits: 1.5
            """
        )
    )
    lines, nmea = load_config(path).drivers
    assert isinstance(lines, SerialLinesConfig) and isinstance(nmea, SerialNmeaConfig)
    assert lines.command == "READ\r\n" and lines.delimiter == "\n"
    assert nmea.baudrate == 4800 and nmea.stopbits == 1.5 and nmea.sentences == ("GGA", "RMC")


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            "- {type: serial, name: a, port: /dev/x, format: json}",
            "FILE:3: drivers[0]: the key 'protocol' is missing "
            "(for a serial driver: lines, nmea or modbus-rtu)",
        ),
        (
            "- {type: serial, name: a, protocol: nmae, port: /dev/x}",
            "FILE:3: drivers[0]: unknown protocol 'nmae'; expected one of: 'lines', 'nmea', "
            "'modbus-rtu'",
        ),
        (
            "- {type: seriall, name: a}",
            "FILE:3: drivers[0]: unknown type 'seriall'; expected one of: 'mqtt', 'serial', 'ble'",
        ),
        (
            "- {type: serial, name: a, protocol: lines, format: json}",
            "FILE:3: drivers[0]: give exactly one of port (e.g. /dev/serial/by-id/usb-FTDI_...) "
            "or usb (vendor_id, product_id, serial_number)",
        ),
        (
            "- {type: serial, name: a, protocol: lines, port: /dev/x, format: csv}",
            "FILE:3: drivers[0]: format csv needs columns: [{name: temperature, unit: Cel}, ...]",
        ),
        (
            "- {type: serial, name: a, protocol: lines, port: /dev/x, format: regex, "
            "pattern: 'a+'}",
            "FILE:3: drivers[0].pattern: the pattern has no named groups, e.g. "
            "T=(?P<temperature>[-.0-9]+)",
        ),
        (
            "- {type: serial, name: a, protocol: lines, port: /dev/x, format: json, "
            "delimiter: '€', encoding: ascii}",
            "FILE:3: drivers[0]: delimiter '€' cannot be written in encoding 'ascii'; use "
            "characters that encoding has, or another encoding (e.g. utf-8)",
        ),
        (
            "- {type: serial, name: a, protocol: lines, port: /dev/x, format: json, "
            "command: 'READ °C', encoding: ascii}",
            "FILE:3: drivers[0]: command 'READ °C' cannot be written in encoding 'ascii'; use "
            "characters that encoding has, or another encoding (e.g. utf-8)",
        ),
        (
            "- {type: serial, name: a, protocol: lines, port: /dev/x, format: json, "
            "encoding: utf-16}",
            "FILE:3: drivers[0].encoding: encoding 'utf-16' does not write ASCII as ASCII, and "
            "lines are cut at the delimiter's bytes; use utf-8, latin-1 or another "
            "ASCII-compatible encoding",
        ),
        (
            "- {type: serial, name: a, protocol: nmea, port: /dev/x, baudrate: 11520000000}",
            "FILE:3: drivers[0].baudrate: input should be less than or equal to 12000000 "
            "(got 11520000000)",
        ),
        (
            "- {type: serial, name: a, protocol: nmea, port: /dev/x, stopbits: 3}",
            "FILE:3: drivers[0].stopbits: stopbits must be 1, 1.5 or 2 (got 3)",
        ),
        (
            "- {type: serial, name: a, protocol: nmea, port: /dev/x, baudrat: 9600}",
            "FILE:3: drivers[0].baudrat: unknown key; did you mean 'baudrate'?",
        ),
        (
            "- {type: serial, name: a, protocol: nmea, usb: {vendor_id: 67b}}",
            "FILE:3: drivers[0].usb.vendor_id: '67b': write 4 hex digits as lsusb shows them, "
            "e.g. '2341' (no 0x)",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_line_and_the_key(
    tmp_path: Path, item: str, expected: str
) -> None:
    assert _load(tmp_path, item) == expected


@pytest.mark.parametrize(
    ("protocol", "name"),
    [
        ("lines, format: json", "my sensor"),
        ("nmea", "gps/1"),
        ("modbus-rtu, units: [{unit_id: 1, device: m, registers: [{name: p, address: 0}]}]", "a b"),
    ],
)
def test_a_driver_name_the_readings_source_cannot_carry_is_refused(
    tmp_path: Path, protocol: str, name: str
) -> None:
    """The name becomes each reading's `source`: the same characters as MQTT and BLE names."""
    item = f'- {{type: serial, name: "{name}", protocol: {protocol}, port: /dev/x}}'
    assert _load(tmp_path, item) == (
        f"FILE:3: drivers[0].name: {name!r}: use only letters A-Z a-z, digits and _ . - (no spaces)"
    )


def test_the_example_loads_with_its_serial_drivers_commented_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(EXAMPLE)]) == 0
    assert main(["check", "--config", str(example_with("serial", tmp_path))]) == 0
    assert "serial lines /dev/serial/by-id/" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.EACCES, "add the service user to the dialout group"),
        (errno.EBUSY, "another program has it open"),
        (errno.EAGAIN, "another program has it open"),
        (errno.ENOENT, "unplugged"),
        (errno.EIO, "unplugged"),
    ],
)
def test_open_errors_say_what_to_do(code: int, advice: str) -> None:
    message = describe_open_error("/dev/ttyUSB7", OSError(code, "x"))
    assert "/dev/ttyUSB7" in message and advice in message


def test_every_serial_example_in_the_configuration_docs_is_a_valid_driver() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    section = docs.split("### Serial (`type: serial`)")[1].split("\n### ")[0]
    examples = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(examples) >= 6
    for example in examples:
        items = yaml.safe_load(example)
        config = GatewayConfig.model_validate({"gateway": {"id": "gw"}, "drivers": items})
        assert config.drivers[0].type == "serial"


def _port(vid: int | None, pid: int | None, serial_number: str | None) -> ListPortInfo:
    info = ListPortInfo("/dev/ttyUSB0", skip_link_detection=True)
    info.vid, info.pid, info.serial_number = vid, pid, serial_number
    return info


@pytest.mark.parametrize(
    ("match", "port", "expected"),
    [
        ({"vendor_id": "0403"}, _port(0x0403, 0x6001, "A10K3J2B"), True),
        ({"vendor_id": "067B", "product_id": "2303"}, _port(0x067B, 0x2303, None), True),
        ({"vendor_id": "0403", "serial_number": "A10K3J2B"}, _port(0x0403, 0x6001, "B"), False),
        ({"product_id": "ea60"}, _port(0x10C4, 0xEA60, "0001"), True),
        ({"vendor_id": "1a86"}, _port(0x0403, 0x6001, None), False),
        ({"serial_number": "x"}, _port(None, None, "x"), False),  # not a USB port
    ],
)
def test_a_usb_match_picks_ports_by_vendor_product_and_serial_number(
    match: dict[str, str], port: ListPortInfo, expected: bool
) -> None:
    assert usb_matches(UsbMatch(**match), port) is expected


def test_one_parity_table_speaks_pyserials_constants_for_every_configurable_parity() -> None:
    """The line driver (pyserial) and the Modbus driver (pymodbus) share it."""
    names = SerialPortConfig.model_fields["parity"].annotation.__args__  # type: ignore[union-attr]
    assert set(PARITY) == set(names)
    assert [PARITY[n] for n in ("none", "even", "odd", "mark", "space")] == [
        serial.PARITY_NONE, serial.PARITY_EVEN, serial.PARITY_ODD,
        serial.PARITY_MARK, serial.PARITY_SPACE,
    ]  # fmt: skip
