"""Finding a serial port that may not be there yet, and saying why one cannot be opened.

USB sensors come and go: a device absent at start-up or unplugged while running is
not a failure of the driver but a wait. `wait_for_port` resolves the configured
`port` (a path or a glob) or `usb` match to a device path and returns as soon as
one exists. While none does it logs once (then a reminder at most every five
minutes, with the count of attempts in between), sets the driver's state to
"waiting for device" and retries with jittered backoff, so a replugged adapter is
picked up within seconds, also under a new ttyUSB number when the configuration
names it by id, by glob or by USB identity.

Every serial protocol (lines, NMEA, Modbus RTU) shares these two functions.
"""

from __future__ import annotations

import asyncio
import errno
import glob
import grp
import os
from typing import Any

from drivers.base import DriverStats
from drivers.serial.port_config import SerialPortConfig, UsbMatch
from gateway.backoff import Backoff
from gateway.logs import RateLimitedLog

WAITING = "waiting for device"
_RETRY_INITIAL_S = 0.25
_RETRY_MAX_S = 2.0  # a stat() or a sysfs scan every two seconds costs nothing
_REMINDER_INTERVAL_S = 300.0
_GLOB_CHARS = frozenset("*?[")


async def wait_for_port(
    config: SerialPortConfig, log: Any, stats: DriverStats, lost: str | None = None
) -> str:
    """The device path to open for `config`, as soon as one exists; waits while none does.

    `lost` is why the last open port went away (unplugged): said here, once, with the wait
    it starts (a driver's own line about it beside "not present" said one event twice).
    """
    backoff = Backoff(_RETRY_INITIAL_S, _RETRY_MAX_S)
    reminders = RateLimitedLog(log, interval=_REMINDER_INTERVAL_S)
    waited = False
    while True:
        path = await _resolve(config)
        if path is not None:
            if waited:
                log.info("serial device is present again", port=path)
            elif lost is not None:  # back at once (a USB reset): the loss is still news
                log.warning("serial device went away; opening it again", error=lost)
            return path
        stats.state = WAITING
        if lost is not None:
            reminders.warning(
                "absent",
                "serial device went away; waiting for it to come back",
                error=lost,
                wanted=config.wanted(),
            )
        else:
            reminders.warning(
                "absent",
                "serial device not present; waiting for it to be plugged in",
                wanted=config.wanted(),
                hint="plug it in, or check `port`/`usb` (ls -l /dev/serial/by-id/)",
            )
        waited = True
        await asyncio.sleep(backoff.next_delay())


async def _resolve(config: SerialPortConfig) -> str | None:
    if config.port is not None:
        return _resolve_path(config.port)
    # Listing ports reads sysfs (many small files): keep it off the event loop.
    return await asyncio.to_thread(_resolve_usb, config.usb or UsbMatch())


def _resolve_path(port: str) -> str | None:
    """The path itself if it exists; for a glob, the first existing match in sorted order."""
    if _GLOB_CHARS.isdisjoint(port):
        return port if os.path.exists(port) else None
    matches = sorted(glob.glob(port))
    return matches[0] if matches else None


def _resolve_usb(usb: UsbMatch) -> str | None:
    from serial.tools import list_ports

    for info in sorted(list_ports.comports(), key=lambda info: str(info.device)):
        if usb_matches(usb, info):
            return str(info.device)
    return None


def usb_matches(usb: UsbMatch, info: Any) -> bool:
    """Whether a port (pyserial's `ListPortInfo`) is the USB device `usb` describes."""
    if info.vid is None:
        return False  # not a USB device
    if usb.vendor_id is not None and info.vid != int(usb.vendor_id, 16):
        return False
    if usb.product_id is not None and info.pid != int(usb.product_id, 16):
        return False
    return usb.serial_number is None or info.serial_number == usb.serial_number


def describe_open_error(path: str, exc: OSError) -> str:
    """Why `path` cannot be opened, and what to do about it, in one line."""
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied opening {path}: add the service user to the "
            f"{_group_of(path)} group (usermod -aG {_group_of(path)} edge-gateway), "
            "then restart the service"
        )
    if code in (errno.EBUSY, errno.EAGAIN):
        return (
            f"{path} is busy: another program has it open (a serial console, gpsd, "
            "ModemManager, another gateway); stop it, or set exclusive: false to share the port"
        )
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return f"{path} is gone: the device was unplugged; waiting for it to come back"
    if code == errno.EIO:
        return f"I/O error on {path}: the device was unplugged or has failed; reopening it"
    reason = exc.strerror or str(exc)
    return f"cannot open {path}: {reason}"


def _group_of(path: str) -> str:
    """The group owning the device node (dialout on Debian and Raspberry Pi OS)."""
    try:
        name = grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return "dialout"
    return "dialout" if name == "root" else name
