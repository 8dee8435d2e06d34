"""What every serial driver shares: which port, and how its line is set up.

Protocol configs (`lines`, `nmea`, `modbus-rtu`) subclass `SerialPortConfig`, so one
driver item in YAML reads `type: serial`, `protocol: ...`, the port settings and the
protocol's own keys side by side.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from gateway.config_types import Claim, Name, StrictModel, number_from_text

PARITY = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}
"""`parity` as pyserial (and so pymodbus) spells it: serial.PARITY_NONE is "N", and so on."""
MAX_BAUDRATE = 12_000_000
"""The fastest USB serial adapters (FTDI FT232H); pyserial overflows far above it."""


class UsbMatch(StrictModel):
    """Pick the port by what the USB adapter says about itself, whatever its ttyUSB number."""

    vendor_id: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{4}$")
    product_id: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{4}$")
    serial_number: str | None = None

    @model_validator(mode="after")
    def _says_something(self) -> UsbMatch:
        if self.vendor_id is None and self.product_id is None and self.serial_number is None:
            raise ValueError("give at least one of vendor_id, product_id, serial_number")
        return self


class SerialPortConfig(StrictModel):
    type: Literal["serial"]
    protocol: str
    """Each protocol's config narrows this to its own name (the union's discriminator)."""
    name: Name
    """Becomes each reading's `source`: the same characters as an MQTT or BLE driver's name."""
    port: str | None = None
    """A device path (prefer /dev/serial/by-id/...) or a glob such as /dev/ttyUSB*."""
    usb: UsbMatch | None = None
    baudrate: int = Field(default=9600, gt=0, le=MAX_BAUDRATE)
    bytesize: Annotated[Literal[5, 6, 7, 8], BeforeValidator(number_from_text)] = 8
    parity: Literal["none", "even", "odd", "mark", "space"] = "none"
    stopbits: float = 1
    """1, 1.5 or 2 (a float: typing's Literal cannot hold 1.5)."""
    exclusive: bool = True
    """Lock the port (flock, as pyserial does) so that a second program cannot open it too."""

    @field_validator("port")
    @classmethod
    def _absolute(cls, port: str | None) -> str | None:
        if port is not None and not port.startswith("/"):  # under systemd, relative to /
            raise ValueError(
                f"{port!r} is not a device path; write it in full: /dev/{port.lstrip('./')}, "
                "or better a /dev/serial/by-id/... path"
            )
        return port

    @field_validator("stopbits")
    @classmethod
    def _known_stopbits(cls, stopbits: float) -> float:
        if stopbits not in (1, 1.5, 2):
            raise ValueError(f"stopbits must be 1, 1.5 or 2 (got {stopbits:g})")
        return stopbits

    @model_validator(mode="after")
    def _one_way_to_find_the_port(self) -> SerialPortConfig:
        if (self.port is None) == (self.usb is None):
            raise ValueError(
                "give exactly one of port (e.g. /dev/serial/by-id/usb-FTDI_...) "
                "or usb (vendor_id, product_id, serial_number)"
            )
        return self

    def wanted(self) -> str:
        """What the configuration asks for, in words, for logs and `check`."""
        if self.port is not None:
            return self.port
        usb = self.usb or UsbMatch()
        parts = [
            f"{key}={value}"
            for key, value in (
                ("vendor_id", usb.vendor_id),
                ("product_id", usb.product_id),
                ("serial_number", usb.serial_number),
            )
            if value is not None
        ]
        return "usb " + " ".join(parts)

    @property
    def longest_stop_s(self) -> float:
        """A serial driver stops at once: its reads and polls are cancelled on the event loop."""
        return 0.0

    @property
    def claims(self) -> tuple[Claim, ...]:
        """Two readers of one port would each get part of its bytes (a glob may match several
        ports, so only a path is claimed)."""
        if self.port is None or any(c in self.port for c in "*?["):
            return ()
        return (Claim("port", f"the serial port {self.port}", "one driver per port"),)

    def summary(self) -> str:
        """One line for `edge-gateway check`."""
        return f"serial {self.protocol} {self.wanted()} at {self.baudrate} baud"
