"""Decoders of `protocol: lines`: one text line in, one reading out, or a `DecodeError`.

Four formats, one table (`FORMATS`): each turns the line's text into named raw
values; what follows is shared (numbers from text, the timestamp field, units, tags).
Pure functions: no I/O, no logging.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache

from drivers.serial.lines_config import SerialLinesConfig
from drivers.values import checked_value, parse_timestamp
from gateway import fastjson
from gateway.errors import DecodeError
from gateway.model import Reading, Value, utc_from_epoch

RawValues = dict[str, object]
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_INT = re.compile(r"[-+]?\d{1,18}")
_KV_PAIR = re.compile(r"([^\s=:;,]+)\s*[=:]\s*([^\s;,]*)")


def decode_line(config: SerialLinesConfig, line: bytes, received: float, source: str) -> Reading:
    """Decode one line (without its delimiter) in the configured format."""
    try:
        text = line.decode(config.encoding).strip()
    except UnicodeDecodeError:
        raise DecodeError(f"not {config.encoding} text", line) from None
    if not text:
        raise DecodeError("empty line", line)
    raw = FORMATS[config.format](config, text, line)
    stamp = raw.pop(config.timestamp, None) if config.timestamp else None
    try:
        ts = parse_timestamp(stamp, line)
    except (ValueError, OverflowError, OSError) as exc:
        raise DecodeError(f"timestamp out of range ({exc})", line) from None
    values: dict[str, Value] = {}
    for name, value in raw.items():
        if value is None or isinstance(value, dict | list):
            continue  # JSON nulls and nested structures carry no sample value
        values[name] = checked_value(name, value, line)
    if not values:
        raise DecodeError("no values in the line", line)
    return Reading(
        device=config.device or config.name,
        ts=ts if ts is not None else utc_from_epoch(received),
        values=values,
        source=source,
        units={name: unit for name, unit in _units(config).items() if name in values},
        tags=config.tags,
    )


def _json(config: SerialLinesConfig, text: str, line: bytes) -> RawValues:
    try:
        doc = fastjson.loads(text)
    except ValueError as exc:
        raise DecodeError(f"not valid JSON ({exc})", line) from None
    except RecursionError:
        raise DecodeError("JSON nested too deeply", line) from None
    if not isinstance(doc, dict):
        raise DecodeError(f"expected a JSON object, got {type(doc).__name__}", line)
    return doc


def _kv(config: SerialLinesConfig, text: str, line: bytes) -> RawValues:
    """`temp=21.5 hum=40`, also with `:` and `,`/`;` between pairs."""
    pairs = _KV_PAIR.findall(text)
    leftover = _KV_PAIR.sub("", text).strip(" \t,;")
    if not pairs or leftover:
        raise DecodeError("expected name=value pairs, e.g. temp=21.5 hum=40", line)
    return {name: _from_text(value) for name, value in pairs}


def _csv(config: SerialLinesConfig, text: str, line: bytes) -> RawValues:
    columns = config.columns or []
    cells = [cell.strip() for cell in text.split(config.separator)]
    if len(cells) != len(columns):
        raise DecodeError(f"expected {len(columns)} columns, got {len(cells)}", line)
    return {
        col.name: _from_text(cell) for col, cell in zip(columns, cells, strict=True) if col.name
    }


def _regex(config: SerialLinesConfig, text: str, line: bytes) -> RawValues:
    match = _compiled(config.pattern or "").fullmatch(text)
    if match is None:
        raise DecodeError("the line does not match the pattern", line)
    return {name: _from_text(value) for name, value in match.groupdict().items() if value}


def _units(config: SerialLinesConfig) -> dict[str, str]:
    """`units`, plus the units of `columns` for csv."""
    columns = {col.name: col.unit for col in config.columns or [] if col.name and col.unit}
    return {**columns, **config.units}


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _from_text(text: str) -> object:
    """A number when the text is one (an int when it has no point), else the text.

    A number beyond a float's range (`1e999`) reads as infinity, which `checked_value`
    refuses as it refuses a JSON `1e999`, NaN or Infinity: a `DecodeError`, not a string.
    """
    if _INT.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text):
        return float(text)
    return text


FORMATS: dict[str, Callable[[SerialLinesConfig, str, bytes], RawValues]] = {
    "json": _json,
    "kv": _kv,
    "csv": _csv,
    "regex": _regex,
}
