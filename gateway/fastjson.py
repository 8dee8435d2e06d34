"""JSON for every reading: orjson where it gives the json module's result, else the json module.

Every reading is parsed once (its payload) and written once (into the buffer): with the json
module that was ~14 us of the ~140 us of CPU a reading costs at 1,000/s; orjson takes ~1.5 us
(x86; a Pi is slower by the same ratio). Where the two differ, the json module's behaviour
stays: what orjson refuses to parse (NaN literals, UTF-16 or -32, a byte order mark, lone
surrogates, deep nesting) goes to the json module, which accepts or refuses it as before; an
integer beyond 64 bits, which orjson reads as a float, is read again by the json module; and
a document orjson writes differently (NaN as null) or refuses (an integer beyond 64 bits, a
key that is not a string) is written by the json module, which refuses NaN.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_json_loads = json.loads
_json_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_LARGEST_INT64 = 9.2e18
"""Below 2**63 in magnitude a float from orjson was written as a float, never as an integer
(orjson reads integers up to 2**64 - 1 exactly, and beyond that as floats)."""
_CONTAINERS_OR_FLOAT = frozenset({float, dict, list})


def loads(payload: bytes | str) -> Any:
    """Parse JSON as `json.loads` does; its exceptions (ValueError, RecursionError) too."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _json_loads(payload)
    return doc if _no_large_floats(doc) else _json_loads(payload)


def dumps(doc: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; ValueError for NaN or infinity (the json module's allow_nan=False)."""
    try:
        text = orjson.dumps(doc)
    except TypeError:  # orjson.JSONEncodeError: beyond 64 bits, or a key that is not a str
        return _json_encode(doc).encode()
    # "null" is a None (the json module writes the same) or a NaN (it refuses): it decides.
    # Otherwise the values are equal; some small floats read differently (1e-7 for 1e-07).
    if b"null" in text:
        return _json_encode(doc).encode()
    # A copy, 0.2 us: what orjson returns keeps its whole 4 KiB work buffer allocated, and
    # the buffer holds thousands of readings' JSON (+6.5 MB peak RSS under overload).
    return bytes(memoryview(text))


def _no_large_floats(node: Any) -> bool:
    kind = type(node)
    if kind is float:
        return bool(-_LARGEST_INT64 < node < _LARGEST_INT64)
    if kind is dict:
        for value in node.values():
            if type(value) in _CONTAINERS_OR_FLOAT and not _no_large_floats(value):
                return False
    elif kind is list:
        for value in node:
            if type(value) in _CONTAINERS_OR_FLOAT and not _no_large_floats(value):
                return False
    return True
