"""A NOTIFY_SOCKET for a gateway process: receives what it tells systemd, as systemd would."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

Fields = dict[str, str]


@dataclass(frozen=True, slots=True)
class Notice:
    at: float  # time.monotonic() on arrival
    fields: Fields


class NotifyListener:
    """A datagram socket in the abstract namespace; a thread collects each datagram."""

    def __init__(self) -> None:
        self.name = f"@edge-gateway-test-{secrets.token_hex(6)}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + self.name[1:])
        self._socket.settimeout(0.2)
        self.notices: list[Notice] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)

    def env(self, watchdog_s: float) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.name, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._lock:
                self.notices.append(Notice(time.monotonic(), fields))

    def since(self, start: float, key: str | None = None) -> list[Notice]:
        with self._lock:
            return [n for n in self.notices if n.at >= start and (key is None or key in n.fields)]

    def wait_for(
        self, match: Callable[[Fields], bool], timeout: float, start: float = 0.0
    ) -> Notice:
        """The first notice after `start` that matches; TimeoutError with what came instead."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for notice in self.since(start):
                if match(notice.fields):
                    return notice
            time.sleep(0.05)
        raise TimeoutError(f"no matching notice in {timeout} s; got {self.since(start)[-5:]}")

    def __enter__(self) -> NotifyListener:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closed.set()
        self._thread.join()
        self._socket.close()
