"""An open serial port, read and written through the asyncio event loop.

pyserial opens and configures the port (termios, exclusive lock, input flush)
and leaves its file descriptor non-blocking. Reading does not use pyserial's
`read()` (a `select` loop meant for threads): the descriptor is registered with
the loop (`add_reader`) only while a read waits, and `os.read` takes whatever
arrived. No thread, no timeout polling, and a cancelled read leaves nothing
behind. The same holds for writes (`add_writer`).

An unplugged USB adapter (and a closed pseudo-terminal) shows as readable, then
as end of file or EIO: both raise `PortGone`, and the driver goes back to
waiting for the device.
"""

from __future__ import annotations

import asyncio
import os
import termios
from collections.abc import Iterator
from contextlib import contextmanager

import serial

from drivers.serial.port_config import PARITY, SerialPortConfig
from drivers.serial.ports import describe_open_error
from gateway.errors import GatewayError

_READ_SIZE = 4096


class PortGone(GatewayError):
    """The device went away while open (unplugged, or its driver reported an I/O error)."""


class CannotOpen(GatewayError):
    """The port exists but cannot be opened; the message says what to do."""


class SerialLink:
    """One open port. Use `open_link()`; `read()` and `write()` never block the loop."""

    def __init__(self, port: serial.Serial, path: str) -> None:
        self._port = port
        self._fd: int = port.fileno()
        self.path = path

    async def read(self) -> bytes:
        """The bytes that arrived, as soon as there are any; `PortGone` when it is unplugged."""
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                await self._ready(writable=False)
                continue
            except OSError as exc:
                raise PortGone(describe_open_error(self.path, exc)) from None
            if not data:
                raise PortGone(f"{self.path} reached end of file: the device was unplugged")
            return data

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await self._ready(writable=True)
                continue
            except OSError as exc:
                raise PortGone(describe_open_error(self.path, exc)) from None
            view = view[written:]

    async def _ready(self, writable: bool) -> None:
        """Wait until the descriptor is readable (or writable), then unregister it."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        (loop.add_writer if writable else loop.add_reader)(self._fd, wake)
        try:
            await ready
        finally:
            (loop.remove_writer if writable else loop.remove_reader)(self._fd)


@contextmanager
def open_link(path: str, config: SerialPortConfig) -> Iterator[SerialLink]:
    """Open and configure `path` as `config` says; `CannotOpen` says why not, and what to do.

    Opening is a few quick system calls (open, termios, flock), done on the loop:
    a thread would leak the port when the open is cancelled half-way.
    """
    port = serial.Serial()
    port.port = path
    port.baudrate = config.baudrate
    port.bytesize = config.bytesize
    port.parity = PARITY[config.parity]
    port.stopbits = config.stopbits
    port.exclusive = config.exclusive
    try:
        port.open()
    except serial.SerialException as exc:
        if exc.errno is None:  # pyserial's own errors, e.g. termios refused the settings
            raise CannotOpen(
                f"cannot set up {path} with baudrate {config.baudrate}, {config.bytesize} bits, "
                f"parity {config.parity}, {config.stopbits:g} stop bits: {exc}; check that the "
                "adapter supports these settings and that `port` is a serial port"
            ) from None
        raise CannotOpen(describe_open_error(path, exc)) from None
    try:
        try:
            _reads_wait_for_a_byte(port.fileno())
        except termios.error as exc:  # unplugged since the open: the tty is hung up (EIO)
            raise PortGone(f"{path} went away while it was being set up: {exc}") from None
        yield SerialLink(port, path)
    finally:
        port.close()


def _reads_wait_for_a_byte(fd: int) -> None:
    """VMIN=1: an empty read then means end of file (unplugged), not "nothing yet".

    pyserial sets VMIN=0 (it waits with select); with it, a read with no data
    returns 0 bytes, indistinguishable from a hang-up. With VMIN=1 and the
    descriptor non-blocking, no data is EAGAIN and a hang-up is EOF or EIO.
    """
    attrs = termios.tcgetattr(fd)
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
