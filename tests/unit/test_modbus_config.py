"""Modbus RTU configuration: what a user writes, and the errors a wrong register map gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.serial.modbus_config import ModbusRtuConfig
from gateway.config import load_config
from gateway.errors import ConfigError


def bus(*units: dict[str, Any]) -> dict[str, Any]:
    return {"type": "serial", "protocol": "modbus-rtu", "name": "rs485", "port": "/dev/ttyUSB0",
            "units": list(units)}  # fmt: skip


def unit(unit_id: int = 1, **fields: Any) -> dict[str, Any]:
    registers = [{"name": "voltage", "address": 0, "type": "float32"}]
    return {"unit_id": unit_id, "device": f"meter-{unit_id}", "registers": registers, **fields}


@pytest.mark.parametrize(
    ("register", "message"),
    [
        ({"kind": "coil", "type": "uint16"}, "a coil holds one bit; use type: bool"),
        ({"kind": "holding", "type": "bool"}, "type bool is for kind coil or discrete"),
        ({"address": 65535, "type": "float32"}, "runs past 65535"),
        ({"type": "float64"}, "Input should be"),
    ],
)
def test_a_register_that_cannot_be_read_as_written_is_refused(
    register: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        ModbusRtuConfig.model_validate(
            bus(unit(registers=[{"name": "x", "address": 0, **register}]))
        )


def test_units_on_one_bus_need_their_own_id_and_device() -> None:
    with pytest.raises(ValidationError, match=r"share a unit_id: \[1\]"):
        ModbusRtuConfig.model_validate(bus(unit(1), {**unit(1), "device": "other"}))
    with pytest.raises(ValidationError, match="share a device"):
        ModbusRtuConfig.model_validate(bus(unit(1), {**unit(2), "device": "meter-1"}))


def test_a_gateway_file_with_a_modbus_bus_loads_and_errors_name_the_key(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    head = "gateway: {id: gw, site: s}\ndrivers:\n  - type: serial\n    protocol: modbus-rtu\n"
    config.write_text(
        head + "    name: rs485\n    port: /dev/ttyUSB0\n    units:\n"
        "      - {unit_id: 3, device: m3, registers: [{name: v, address: 0, type: int16}]}\n"
    )
    loaded = load_config(config, check_files=False)
    (driver,) = loaded.drivers
    assert isinstance(driver, ModbusRtuConfig)
    assert driver.units[0].registers[0].type == "int16"
    config.write_text(
        head + "    name: rs485\n    port: /dev/ttyUSB0\n    units:\n"
        "      - {unit_id: 300, device: m3, registers: [{name: v, address: 0}]}\n"
    )
    with pytest.raises(ConfigError, match="unit_id"):
        load_config(config, check_files=False)
