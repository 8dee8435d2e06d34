"""Configuration of `protocol: nmea`: NMEA 0183 sentences from a GPS receiver."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from drivers.serial.port_config import MAX_BAUDRATE, SerialPortConfig
from gateway.config_types import Seconds


class SerialNmeaConfig(SerialPortConfig):
    protocol: Literal["nmea"]
    baudrate: int = Field(default=4800, gt=0, le=MAX_BAUDRATE)
    """NMEA 0183's standard rate; many USB GPS receivers use 9600."""
    device: Annotated[str, Field(min_length=1)] | None = None
    """The readings' device; default: the driver's name."""
    sentences: Annotated[tuple[Literal["GGA", "RMC"], ...], Field(min_length=1)] = ("GGA", "RMC")
    """Which sentences become readings (from any talker: GP, GN, GL, GA, BD); others are ignored."""
    max_line_bytes: Annotated[int, Field(ge=82, le=4096)] = 164
    """NMEA allows 82 characters; some receivers send longer proprietary sentences."""
    tags: dict[str, str] = Field(default_factory=dict)
    stall_timeout_s: Seconds | None = None
    """No byte for this long: counted as `stalled` and shown in status (default: never)."""
