"""systemd's notify protocol (sd_notify), spoken directly over its datagram socket.

The protocol is a few `KEY=value` lines in one datagram to the AF_UNIX socket named
by `$NOTIFY_SOCKET` (a leading `@` means Linux's abstract namespace). Writing it here
costs fewer lines than a dependency would, and runs the same on a developer's laptop:
without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

from gateway.logs import RateLimitedLog

log = structlog.get_logger("gateway.notify")


class Notifier:
    """Tells systemd how the service is doing: READY, STATUS, WATCHDOG, RELOADING, STOPPING."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        self.watchdog_s = _watchdog_interval(environ)
        self._rate_limited = RateLimitedLog(log, 60.0)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: str | int) -> None:
        """One datagram of `KEY=value` lines; a lost one is logged (rate-limited), not raised:
        the gateway's work must not depend on systemd reading its reports."""
        if self._socket is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:
            self._rate_limited.warning(
                "notify", "cannot notify systemd", socket=self._address, error=str(exc)
            )

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def reloading(self) -> None:
        self.send(RELOADING=1, STATUS="reloading the configuration")

    def stopping(self) -> None:
        self.send(STOPPING=1, STATUS="stopping: committing and waiting for confirms")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """`WatchdogSec=` in seconds, if systemd expects pings from this very process."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):  # meant for another process (e.g. a parent shell)
        return None
    return int(usec) / 1_000_000
