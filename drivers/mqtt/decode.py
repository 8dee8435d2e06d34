"""Payload decoders for MQTT messages: JSON objects, bare numbers and SenML (RFC 8428).

Pure functions: payload in, readings out, or a `DecodeError` that says what is wrong
and names the field. SenML packs are taken whole or refused whole: a record with a data
value (`vd`, base64 bytes with no meaning a reading could carry) or with a field whose
name ends in `_` (must-understand, RFC 8428 section 4.4; this decoder knows none) makes
the pack a `DecodeError`, so nothing is dropped without being counted as malformed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from drivers.mqtt.config import FieldSpec, Subscription
from drivers.values import check_encodable, checked_value, is_scalar, parse_timestamp
from gateway import fastjson
from gateway.errors import DecodeError
from gateway.model import Reading, Value, utc_from_epoch

Decoder = Callable[[Subscription, str, bytes, float, str], list[Reading]]
"""(subscription, device, payload, received at (epoch s), source) -> readings."""

_SENML_RELATIVE_LIMIT = 2**28  # RFC 8428 section 4.5.3: smaller times are relative to now


def decode(
    sub: Subscription, device: str, payload: bytes, received: float, source: str
) -> list[Reading]:
    """Decode one message with its subscription's format; raise only `DecodeError`."""
    try:
        return DECODERS[sub.format](sub, device, payload, received, source)
    except (ValueError, OverflowError, OSError) as exc:  # the decoders name the field they know
        raise DecodeError(
            f"{sub.format} payload: a value is out of range ({exc})", payload
        ) from None


def decode_json(
    sub: Subscription, device: str, payload: bytes, received: float, source: str
) -> list[Reading]:
    doc = _load_json(payload)
    if not isinstance(doc, dict):
        raise DecodeError(f"expected a JSON object, got {type(doc).__name__}", payload)
    try:
        ts = parse_timestamp(_lookup(doc, sub.timestamp), payload) if sub.timestamp else None
    except (ValueError, OverflowError, OSError) as exc:  # e.g. a time beyond the year 9999
        raise DecodeError(f"timestamp {sub.timestamp!r} is out of range ({exc})", payload) from None
    values: dict[str, Value] = {}
    units: dict[str, str] = {}
    if sub.fields is None:
        for name, raw in doc.items():
            if name != sub.timestamp and is_scalar(raw):
                values[name] = checked_value(name, raw, payload)
                if name in sub.units:
                    units[name] = sub.units[name]
    else:
        for name, spec in sub.fields.items():
            spec = FieldSpec(path=spec) if isinstance(spec, str) else spec
            raw = _lookup(doc, spec.path)
            if raw is None:
                continue
            if not is_scalar(raw):
                raise DecodeError(f"field {spec.path!r} is not a number, bool or string", payload)
            values[name] = checked_value(name, raw, payload)
            unit = spec.unit or sub.units.get(name)
            if unit:
                units[name] = unit
    if not values:
        raise DecodeError("no values in the JSON object (check the subscription's fields)", payload)
    return [
        Reading(
            device=device,
            ts=ts if ts is not None else utc_from_epoch(received),
            values=values,
            source=source,
            units=units,
            tags=sub.tags,
        )
    ]


def decode_number(
    sub: Subscription, device: str, payload: bytes, received: float, source: str
) -> list[Reading]:
    text = payload.strip()
    if b"_" in text:  # Python's int() and float() take 1_000; a sensor's number never has it
        raise DecodeError("expected a bare number", payload)
    try:
        number: float | int = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise DecodeError("expected a bare number", payload) from None
    value = checked_value(sub.value, number, payload)
    return [
        Reading(
            device=device,
            ts=utc_from_epoch(received),
            values={sub.value: value},
            source=source,
            units={sub.value: sub.unit} if sub.unit else {},
            tags=sub.tags,
        )
    ]


def decode_senml(
    sub: Subscription, device: str, payload: bytes, received: float, source: str
) -> list[Reading]:
    """SenML JSON: records resolved against base fields, one reading per (device, time).

    With a device template the topic names the device and the resolved record
    name names the value; without one the base name (`bn`) names the device.
    A name given again for the same device and time starts a reading of its own:
    a value is never overwritten by a later record.
    """
    pack = _load_json(payload)
    if not isinstance(pack, list) or not pack:
        raise DecodeError("SenML must be a non-empty JSON array of records", payload)
    base_name, base_time, base_unit, base_value = "", 0.0, None, 0.0
    grouped: dict[tuple[str, datetime], list[tuple[dict[str, Value], dict[str, str]]]] = {}
    for record in pack:
        if not isinstance(record, dict):
            raise DecodeError("a SenML record is not a JSON object", payload)
        _refuse_unsupported(record, payload)
        base_name = _text(record.get("bn", base_name), "bn", payload)
        base_time = _number(record.get("bt", base_time), "bt", payload)
        base_unit = record.get("bu", base_unit)
        base_value = _number(record.get("bv", base_value), "bv", payload)
        name = base_name + _text(record.get("n", ""), "n", payload)
        if sub.device is None:
            owner = base_name.rstrip(":/") or device
            value_name = name[len(base_name) :] or name
        else:
            owner, value_name = device, name
        if not value_name:
            raise DecodeError("a SenML record has no name (n or bn)", payload)
        if "v" in record:
            value: Value = checked_value(
                value_name, _number(record["v"], "v", payload) + base_value, payload
            )
        elif "vs" in record:
            value = _text(record["vs"], "vs", payload)
        elif "vb" in record:
            if not isinstance(record["vb"], bool):
                raise DecodeError("SenML vb must be true or false", payload)
            value = record["vb"]
        elif "s" in record:
            value = checked_value(value_name, _number(record["s"], "s", payload), payload)
        else:
            continue  # a record carrying only base fields
        t = base_time + _number(record.get("t", 0), "t", payload)
        when = _senml_time(received + t if t < _SENML_RELATIVE_LIMIT else t, payload)
        unit = record.get("u", base_unit)
        if isinstance(unit, str):
            check_encodable(unit, payload)
        instant = grouped.setdefault((owner, when), [])
        if not instant or value_name in instant[-1][0]:
            instant.append(({}, {}))
        values, units = instant[-1]
        values[value_name] = value
        if isinstance(unit, str) and unit:
            units[value_name] = unit
    if not grouped:
        raise DecodeError("the SenML pack holds no values", payload)
    return [
        Reading(owner, when, values, source, units, sub.tags)
        for (owner, when), instant in grouped.items()
        for values, units in instant
    ]


def _refuse_unsupported(record: dict[str, Any], payload: bytes) -> None:
    """A data value, or a must-understand field (RFC 8428 section 4.4): refuse the pack."""
    if "vd" in record:
        raise DecodeError(
            "SenML vd (data value) is not supported; send the value as v, vs or vb", payload
        )
    for key in record:
        if key.endswith("_"):
            raise DecodeError(
                f"SenML field {key!r} must be understood (its name ends in _, "
                "RFC 8428 section 4.4) and this gateway does not know it",
                payload,
            )


def _senml_time(when: float, payload: bytes) -> datetime:
    try:
        return utc_from_epoch(when)
    except (ValueError, OverflowError, OSError):
        raise DecodeError(
            f"SenML time bt + t is {when:g} s, out of range (years 1 to 9999)", payload
        ) from None


DECODERS: dict[str, Decoder] = {
    "json": decode_json,
    "number": decode_number,
    "senml": decode_senml,
}


def _load_json(payload: bytes) -> Any:
    try:
        return fastjson.loads(payload)  # UTF-8, or UTF-16 or -32 as the json module knows them
    except UnicodeDecodeError as exc:  # its words name the codec the json module guessed
        raise DecodeError(f"not valid JSON: not UTF-8 text (byte {exc.start})", payload) from None
    except ValueError as exc:
        raise DecodeError(f"not valid JSON ({exc})", payload) from None
    except RecursionError:
        raise DecodeError("JSON nested too deeply", payload) from None


def _lookup(doc: dict[str, Any], path: str | None) -> Any:
    if path and "." not in path:
        return doc.get(path)
    node: Any = doc
    for part in (path or "").split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _number(raw: Any, key: str, payload: bytes) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise DecodeError(f"SenML {key} must be a finite number", payload)
    try:
        number = float(raw)
    except OverflowError:  # an integer beyond a float's range
        raise DecodeError(
            f"SenML {key} must be a finite number (beyond a float's range)", payload
        ) from None
    if not math.isfinite(number):
        raise DecodeError(f"SenML {key} must be a finite number", payload)
    return number


def _text(raw: Any, key: str, payload: bytes) -> str:
    if not isinstance(raw, str):
        raise DecodeError(f"SenML {key} must be a string", payload)
    check_encodable(raw, payload)
    return raw
