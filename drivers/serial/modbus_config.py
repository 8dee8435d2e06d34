"""Configuration of a Modbus RTU bus (`type: serial`, `protocol: modbus-rtu`).

One driver item is one RS-485 bus (one serial port); `units` are the devices on it,
each with its own register map and schedule. The register map is data, not code: a
new meter is new YAML, decoded by the table-driven `drivers.serial.modbus_registers`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from drivers.serial.port_config import SerialPortConfig
from gateway.config_types import Seconds, StrictModel

RegisterKind = Literal["holding", "input", "coil", "discrete"]
RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32", "bool"]
Order = Literal["big", "little"]


class RegisterSpec(StrictModel):
    """One value of a unit's register map: where it sits and how to turn words into it.

    `byte_order` is the order of the two bytes inside each 16-bit register (Modbus
    itself is big-endian); `word_order` is the order of the registers of a 32-bit value
    ("big": the high word at the lower address). The value is `raw * scale + offset`.
    """

    name: Annotated[str, Field(min_length=1)]
    kind: RegisterKind = "holding"
    address: Annotated[int, Field(ge=0, le=65535)]
    """The register (or coil) number as sent on the wire, starting at 0 (not 40001)."""
    type: RegisterType = "uint16"
    byte_order: Order = "big"
    word_order: Order = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None

    @model_validator(mode="after")
    def _type_fits_kind(self) -> RegisterSpec:
        bits = self.kind in ("coil", "discrete")
        if bits and self.type != "bool":
            raise ValueError(f"{self.name}: a {self.kind} holds one bit; use type: bool")
        if not bits and self.type == "bool":
            raise ValueError(
                f"{self.name}: type bool is for kind coil or discrete; "
                "a register holds int16, uint16, int32, uint32 or float32"
            )
        if self.address + self.width > 65536:
            raise ValueError(f"{self.name}: address {self.address} + size runs past 65535")
        return self

    @property
    def width(self) -> int:
        """How many registers (or bits) the value takes."""
        return 2 if self.type in ("int32", "uint32", "float32") else 1


class ModbusUnit(StrictModel):
    """One device on the bus, polled every `poll_interval_s`.

    A request that gets no answer within `timeout_s` is sent again up to `retries`
    times; a unit that keeps failing is polled less often (doubling up to
    `max_backoff_s`) so that it cannot eat the bus time of the units that answer.
    """

    unit_id: Annotated[int, Field(ge=1, le=247)]
    device: Annotated[str, Field(min_length=1)]
    """The `device` of its readings, e.g. `meter-1`."""
    poll_interval_s: Seconds = 10.0
    timeout_s: Annotated[float, Field(gt=0, le=10)] = 0.5
    retries: Annotated[int, Field(ge=0, le=5)] = 1
    max_backoff_s: Seconds = 60.0
    registers: Annotated[list[RegisterSpec], Field(min_length=1)]
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_names(self) -> ModbusUnit:
        names = [spec.name for spec in self.registers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"unit {self.unit_id}: register names repeat: {duplicates}")
        return self


class ModbusRtuConfig(SerialPortConfig):
    """One RS-485 bus: its port settings (from `SerialPortConfig`) and its units."""

    protocol: Literal["modbus-rtu"]
    units: Annotated[list[ModbusUnit], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_units(self) -> ModbusRtuConfig:
        for key in ("unit_id", "device"):
            values = [getattr(unit, key) for unit in self.units]
            duplicates = sorted({value for value in values if values.count(value) > 1})
            if duplicates:
                raise ValueError(f"two units on one bus share a {key}: {duplicates}")
        return self
