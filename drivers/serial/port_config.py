"""What every serial driver shares: which port, and how its line is set up.

Protocol configs (`lines`, `nmea`, `modbus-rtu`) subclass `SerialPortConfig`, so one
driver item in YAML reads `type: serial`, `protocol: ...`, the port settings and the
protocol's own keys side by side.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.config_types import StrictModel


class UsbMatch(StrictModel):
    """Pick the port by what the USB adapter says about itself, whatever its ttyUSB number."""

    vendor_id: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{4}$")
    product_id: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{4}$")
    serial_number: str | None = None


class SerialPortConfig(StrictModel):
    type: Literal["serial"]
    name: str = Field(min_length=1)
    port: str | None = None
    """A device path (prefer /dev/serial/by-id/...) or a glob such as /dev/ttyUSB*."""
    usb: UsbMatch | None = None
    baudrate: int = Field(default=9600, gt=0)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["none", "even", "odd", "mark", "space"] = "none"
    stopbits: Literal[1, 1.5, 2] = 1
    exclusive: bool = True
    """Lock the port (TIOCEXCL) so that a second program cannot read it at the same time."""
