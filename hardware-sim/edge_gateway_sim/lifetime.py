"""Lifetimes of the simulator's helper processes (brokers, the private D-Bus).

Each is a context manager that stops what it started also when starting fails half way,
and stops a process politely first, then firmly.
"""

from __future__ import annotations

import subprocess
from types import TracebackType
from typing import Self


class Managed:
    """`with X() as x:` runs `start()`, and `close()` at the end or when `start()` fails."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL if `proc` is still alive after `timeout` seconds; always reaps."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
