"""The few exception types the gateway raises on purpose.

Each carries a message a user can act on: what failed, where, and what to do.
Callers catch these types, never message strings.
"""

import asyncio


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration cannot be used: the message names file, line, key path and fix."""


class DecodeError(GatewayError):
    """A payload from a device could not be turned into readings.

    `sample` keeps the first bytes of the offending payload for the log line.
    """

    def __init__(self, message: str, payload: bytes | str = b"") -> None:
        super().__init__(message)
        raw = payload.encode("utf-8", "replace") if isinstance(payload, str) else payload
        self.sample = raw[:64]


class BufferFull(GatewayError):
    """The buffer is at `buffer.max_bytes` and `when_full` is `reject_new`."""


class StorageError(GatewayError):
    """The buffer's disk failed (I/O error, disk full); nothing was accepted."""


class AcceptedThenCancelled(asyncio.CancelledError):
    """A cancelled `Buffer.put` whose readings were committed all the same: the buffer had
    begun their commit. The caller must not put them again (they would get second ids); the
    cancel goes on, as for any CancelledError. A put cancelled before its commit began
    raises a plain CancelledError, and nothing of it was accepted."""
