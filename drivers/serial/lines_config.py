"""Configuration of `protocol: lines`: text lines in one of four formats, optionally polled."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from drivers.serial.port_config import SerialPortConfig
from gateway.config_types import Seconds, StrictModel

_ASCII = "\r\n\t ,;:=./-+0123456789AZaz"
"""What delimiters, commands and most lines are made of: bytes we frame and send."""


class Column(StrictModel):
    """One CSV column: the value's name (empty: skip the column) and its unit."""

    name: str
    unit: str | None = None


class SerialLinesConfig(SerialPortConfig):
    protocol: Literal["lines"]
    format: Literal["json", "kv", "csv", "regex"]
    device: Annotated[str, Field(min_length=1)] | None = None
    """The readings' device; default: the driver's name."""
    delimiter: Annotated[str, Field(min_length=1)] = "\n"
    """What ends a line; a trailing \\r is stripped too, so \\n also reads CRLF lines."""
    max_line_bytes: Annotated[int, Field(ge=8, le=65536)] = 1024
    encoding: str = "utf-8"
    units: dict[str, str] = Field(default_factory=dict)
    """json, kv, regex: unit by value name."""
    tags: dict[str, str] = Field(default_factory=dict)
    timestamp: str | None = None
    """json, kv, regex: the field holding the sample time (epoch s/ms or RFC 3339 with a zone)."""
    columns: list[Column] | None = None
    """csv: the columns in order."""
    separator: Annotated[str, Field(min_length=1)] = ","
    """csv: the column separator."""
    pattern: str | None = None
    """regex: a regular expression with named groups; each group is a value."""
    command: str | None = None
    """Written when the port opens, and every `poll_interval_s` if set (e.g. "READ\\r\\n")."""
    poll_interval_s: Seconds | None = None
    stall_timeout_s: Seconds | None = None
    """No byte for this long: counted as `stalled` and shown in status (default: never)."""

    @field_validator("delimiter", "command")
    @classmethod
    def _escapes(cls, text: str | None) -> str | None:
        """YAML single-quoted or plain strings keep `\\r\\n` literal; accept them as escapes."""
        if text is None:
            return None
        try:
            return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
        except UnicodeDecodeError:
            raise ValueError(f"invalid escape in {text!r}; write e.g. \\r\\n") from None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
            if not compiled.groupindex:
                raise ValueError(
                    "the pattern has no named groups, e.g. T=(?P<temperature>[-.0-9]+)"
                )
        return pattern

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        try:
            ascii_compatible = _ASCII.encode(encoding) == _ASCII.encode("ascii")
        except LookupError:
            raise ValueError(f"unknown encoding {encoding!r}; use e.g. utf-8 or latin-1") from None
        if not ascii_compatible:  # UTF-16 and -32: a delimiter's bytes are not the line's end
            raise ValueError(
                f"encoding {encoding!r} does not write ASCII as ASCII, and lines are cut at "
                "the delimiter's bytes; use utf-8, latin-1 or another ASCII-compatible encoding"
            )
        return encoding

    @model_validator(mode="after")
    def _format_needs(self) -> SerialLinesConfig:
        if self.format == "csv" and not self.columns:
            raise ValueError("format csv needs columns: [{name: temperature, unit: Cel}, ...]")
        if self.format == "regex" and self.pattern is None:
            raise ValueError("format regex needs a pattern with named groups")
        if self.poll_interval_s is not None and self.command is None:
            raise ValueError("poll_interval_s needs a command to send")
        for key, text in (("delimiter", self.delimiter), ("command", self.command)):
            try:  # the driver sends and frames bytes: say here, not at start, if it cannot
                (text or "").encode(self.encoding)
            except UnicodeEncodeError:
                raise ValueError(
                    f"{key} {text!r} cannot be written in encoding {self.encoding!r}; "
                    "use characters that encoding has, or another encoding (e.g. utf-8)"
                ) from None
        return self
