"""gateway.fastjson gives what the json module gives, value and type, or raises as it does."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import fastjson

_stdlib_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # NaN and infinities too: the json module writes and reads them
    | st.text()  # lone surrogates too
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def outcome(call: Any, *args: Any) -> str:
    """What a call gave, comparable across calls: the value with its types, or the error kind."""
    try:
        return repr(call(*args))
    except (ValueError, RecursionError) as exc:
        return type(exc).__name__


@given(documents)
def test_loads_gives_what_json_loads_gives(doc: Any) -> None:
    text = json.dumps(doc)
    for payload in (text, text.encode("utf-8", "surrogatepass")):
        assert outcome(fastjson.loads, payload) == outcome(json.loads, payload)


@given(st.dictionaries(st.text(), documents, max_size=6))
def test_dumps_writes_what_json_writes_or_refuses_as_it_does(doc: dict[str, Any]) -> None:
    try:
        expected = json.loads(_stdlib_encode(doc))
    except ValueError:  # NaN, infinity
        with pytest.raises(ValueError):
            fastjson.dumps(doc)
        return
    except UnicodeEncodeError:  # lone surrogates: no UTF-8 text can hold them
        return
    written = fastjson.dumps(doc)
    assert repr(json.loads(written)) == repr(expected)


@pytest.mark.parametrize(
    "payload",
    [
        b"18446744073709551616",  # 2**64: orjson reads it as a float
        b"-9223372036854775809",
        b'{"a": [1, {"b": 123456789012345678901234567890}]}',
        b'{"v": NaN, "w": Infinity}',
        '{"t": 21.5}'.encode("utf-16"),
        b'\xef\xbb\xbf{"t": 21.5}',  # a byte order mark
        b'"\\ud800"',
        b"1e400",
    ],
)
def test_what_orjson_reads_otherwise_is_read_as_json_reads_it(payload: bytes) -> None:
    assert outcome(fastjson.loads, payload) == outcome(json.loads, payload)


def test_a_large_integer_keeps_every_digit() -> None:
    assert fastjson.loads(b'{"n": 123456789012345678901234567890}') == {
        "n": 123456789012345678901234567890
    }
    assert fastjson.dumps({"n": 2**70}) == b'{"n":1180591620717411303424}'


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_dumps_refuses_what_is_not_a_finite_number(bad: float) -> None:
    with pytest.raises(ValueError):
        fastjson.dumps({"values": {"t": bad}})


def test_invalid_json_raises_the_json_modules_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        fastjson.loads(b'{"t": ')
    with pytest.raises(RecursionError):
        fastjson.loads(b"[" * 100_000)
