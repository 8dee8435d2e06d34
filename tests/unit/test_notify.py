"""The sd_notify protocol against a real datagram socket, and the clock-sync probe."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.notify import Notifier
from gateway.progress import Progress


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A socket in the abstract namespace, as systemd's own (`@/org/freedesktop/...`)."""
    name = f"@edge-gateway-test-{secrets.token_hex(6)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    sock.settimeout(5)
    yield sock, name
    sock.close()


def fields(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_each_call_is_one_datagram_of_key_value_lines(
    listener: tuple[socket.socket, str],
) -> None:
    sock, name = listener
    notifier = Notifier({"NOTIFY_SOCKET": name})
    notifier.ready("3 buffered")
    assert fields(sock) == {"READY": "1", "STATUS": "3 buffered", "MAINPID": str(os.getpid())}
    notifier.watchdog()
    assert fields(sock) == {"WATCHDOG": "1"}
    notifier.reloading()
    assert fields(sock)["RELOADING"] == "1"
    notifier.stopping()
    assert fields(sock)["STOPPING"] == "1"
    notifier.close()


def test_a_socket_path_works_as_well(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        Notifier({"NOTIFY_SOCKET": str(path)}).status("hello")
        assert fields(sock) == {"STATUS": "hello"}


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")
    notifier.watchdog()
    notifier.stopping()


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    notifier.watchdog()  # ENOENT: systemd went away; the gateway goes on


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "60000000"}, 60.0),
        ({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        ({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_period_only_when_meant_for_this_process(
    environ: dict[str, str], expected: float | None
) -> None:
    assert Notifier(environ).watchdog_s == expected


def test_progress_is_stuck_only_while_work_waits() -> None:
    progress = Progress()
    assert progress.stuck_for(progress.moved + 100) == 0.0  # idle: healthy however long
    progress.begin()
    assert progress.stuck_for(progress.moved + 100) == pytest.approx(100)  # float sum
    progress.end()
    assert progress.stuck_for(progress.moved + 100) == 0.0
