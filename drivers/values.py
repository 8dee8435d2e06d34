"""Checks every decoder applies to what a device sent, whatever its transport.

A value must be a finite number, a bool or a string that UTF-8 can hold (JSON may carry
lone surrogates); a timestamp is epoch seconds or milliseconds, or RFC 3339 with a zone.
Each raises `DecodeError` with the offending payload.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from gateway.errors import DecodeError
from gateway.model import Value, utc_from_epoch

_EPOCH_MS_THRESHOLD = 1e11  # epoch seconds stay below this until the year 5138


_SCALARS = frozenset({int, float, str, bool})


def is_scalar(raw: Any) -> bool:
    return type(raw) in _SCALARS or isinstance(raw, int | float | str | bool)


def checked_value(name: str, raw: Any, payload: bytes) -> Value:
    # Runs for every value of every reading: the common cases first, without a call.
    kind = type(raw)
    if (
        (kind is float and math.isfinite(raw))
        or kind is int
        or kind is bool
        or (kind is str and raw.isascii())
    ) and name.isascii():
        return raw  # type: ignore[no-any-return]
    if isinstance(raw, float) and not math.isfinite(raw):
        raise DecodeError(f"value {name!r} is {raw}, not a finite number", payload)
    if not isinstance(raw, int | float | str | bool):
        raise DecodeError(f"value {name!r} is not a number, bool or string", payload)
    check_encodable(name, payload)
    if isinstance(raw, str):
        check_encodable(raw, payload)
    return raw


def check_encodable(text: str, payload: bytes) -> None:
    """JSON may carry lone surrogates (`"\\ud800"`) that no UTF-8 message can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError("a string holds an invalid Unicode surrogate", payload) from None


def parse_timestamp(raw: Any, payload: bytes) -> datetime | None:
    """Epoch seconds or milliseconds, or RFC 3339; None when the field is absent."""
    if raw is None:
        return None
    if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
        seconds = raw / 1000 if raw > _EPOCH_MS_THRESHOLD else raw
        if 0 <= seconds < 32_503_680_000:  # before the year 3000
            return utc_from_epoch(seconds)
    elif isinstance(raw, str):
        try:
            # RFC 3339 allows a lower-case z (and t, which fromisoformat takes already).
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed.astimezone(UTC)
            raise DecodeError(f"timestamp {raw!r} has no time zone; add Z or +00:00", payload)
    raise DecodeError(f"timestamp {raw!r} is neither epoch seconds nor RFC 3339", payload)
