"""The state directory: one running gateway per directory, and a plain word when it is unusable.

Two gateways on one buffer would both number readings from the same sequence and give
different readings the same id (a consumer that drops duplicates by id would lose real
readings), and they would fight over the MQTT session. An advisory lock on a file in
the directory, held for the gateway's life, makes the second one stop at start; the
kernel releases it when the first exits, however it exits (a SIGKILL too).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from gateway.errors import ConfigError

LOCK_FILE = "gateway.lock"
"""Locked by the gateway that runs with this directory; holds its pid (left after it exits)."""


def problem_with(state_dir: Path) -> str | None:
    """Why no gateway could use `state_dir`, or None: what `check` says, without creating
    anything. Not whether it is writable: `check` is often run by another user than the
    service's (whose directory systemd's StateDirectory= makes); `hold()` tells at start."""
    existing = state_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    return None


@contextlib.contextmanager
def hold(state_dir: Path) -> Iterator[None]:
    """Create `state_dir` if needed and hold its lock; `ConfigError` if another gateway holds
    it or the directory cannot be used (a restart would not change either)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"gateway.state_dir {state_dir} cannot be used: {exc.strerror}; make it a "
            "directory the gateway's user can write (the unit's StateDirectory= does), or set "
            "gateway.state_dir to one"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise ConfigError(
                f"another edge-gateway (pid {holder}) runs with gateway.state_dir {state_dir}: "
                "two would give different readings the same id. Stop it first (sudo systemctl "
                "stop edge-gateway), or give this one a gateway.state_dir of its own"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
