"""A pseudo-terminal standing in for a USB serial adapter, behind a stable symlink.

The gateway opens the symlink (as it would open /dev/serial/by-id/...). `unplug()`
removes the symlink and closes the pty, so the gateway's open port reads EIO, as
it would when a USB adapter is pulled; `plug()` links a *fresh* pty, whose
/dev/pts number differs from the last one (the replacement is allocated while the
old one is still open), like an adapter that comes back as another ttyUSB.

The simulator keeps the slave side open too, in raw mode: bytes written before
the gateway opens wait in the kernel (the gateway flushes them on open, as it
does with a real adapter), and the master never sees EIO while the gateway is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from pathlib import Path


class PtyPort:
    """One simulated device's end of the line. Use within one running event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._master: int | None = None
        self._slave: int | None = None
        self._spare: tuple[int, int] | None = None
        self._received: asyncio.Queue[bytes] = asyncio.Queue()
        self._writable: asyncio.Future[None] | None = None

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def device(self) -> str | None:
        """The /dev/pts path the symlink points to, while plugged."""
        return os.ttyname(self._slave) if self._slave is not None else None

    def plug(self) -> None:
        if self._master is not None:
            return
        master, slave = self._spare or _raw_pty()
        self._spare = None
        self._master, self._slave = master, slave
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._on_readable)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        os.symlink(os.ttyname(slave), temporary)
        os.replace(temporary, self.path)  # atomic: the path never names a half-made link

    def unplug(self) -> None:
        if self._master is None or self._slave is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._spare = self._spare or _raw_pty()  # allocated before the old pty is freed
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._master)
        loop.remove_writer(self._master)
        if self._writable is not None:
            _resolve(self._writable)
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = None

    def close(self) -> None:
        self.unplug()
        if self._spare is not None:
            for fd in self._spare:
                os.close(fd)
            self._spare = None

    async def write(self, data: bytes) -> bool:
        """Write all of `data`; False when the device is (or gets) unplugged first."""
        view = memoryview(data)
        while view:
            fd = self._master
            if fd is None:
                return False
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                loop = asyncio.get_running_loop()
                writable: asyncio.Future[None] = loop.create_future()
                self._writable = writable
                loop.add_writer(fd, _resolve, writable)
                try:
                    await writable
                finally:
                    if self._master == fd:
                        loop.remove_writer(fd)
            except OSError:
                return False
        return True

    async def read(self) -> bytes:
        """The next bytes the gateway wrote to the device (commands, Modbus requests)."""
        return await self._received.get()

    def _on_readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: nobody has the slave open (cannot happen while we hold it)
            return
        if data:
            self._received.put_nowait(data)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _raw_pty() -> tuple[int, int]:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no line editing: a wire, not a terminal
    return master, slave
