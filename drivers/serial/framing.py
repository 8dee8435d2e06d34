"""Cutting a byte stream into delimiter-framed lines, with a length cap.

A serial line has no message boundaries: bytes arrive in whatever pieces the
adapter and the kernel hand over. The framer keeps the unfinished tail between
reads and never holds more than `max_bytes` of it: an overlong line is
reported once and skipped up to its next delimiter, so a device talking at the
wrong baud rate (no delimiter for a long time) costs bounded memory and only
the garbage itself, never the well-formed line after it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Overlong:
    """A line longer than the cap was skipped; `sample` holds its first bytes."""

    sample: bytes


class LineFramer:
    """Feed bytes in, get complete lines (without the delimiter) and overlong reports out."""

    def __init__(self, delimiter: bytes, max_bytes: int) -> None:
        if not delimiter:
            raise ValueError("the delimiter must not be empty")
        self._delimiter = delimiter
        self._max = max_bytes
        self._tail = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes | Overlong]:
        """Lines completed by `data`, in order, each either the line's bytes or an `Overlong`."""
        out: list[bytes | Overlong] = []
        self._tail += data
        start = 0
        while True:
            end = self._tail.find(self._delimiter, start)
            if end < 0:
                break
            line = bytes(self._tail[start:end])
            start = end + len(self._delimiter)
            if self._skipping:
                self._skipping = False  # the rest of a line already reported as overlong
            elif len(line) > self._max:
                out.append(Overlong(line[:64]))
            else:
                out.append(line)
        del self._tail[:start]
        # Keep a partial delimiter beyond the cap: a delimiter split across reads is still found.
        keep = self._max + len(self._delimiter) - 1
        if len(self._tail) > keep:
            if not self._skipping:
                out.append(Overlong(bytes(self._tail[:64])))
                self._skipping = True
            del self._tail[: len(self._tail) - (len(self._delimiter) - 1)]
        return out

    def reset(self) -> bytes:
        """Forget the unfinished tail (the port closed mid-line); return it, for counting."""
        tail = b"" if self._skipping else bytes(self._tail)
        self._tail.clear()
        self._skipping = False
        return tail
