"""One BleakScanner per adapter, kept alive for weeks by a watchdog.

After an adapter power cycle or a bluetoothd restart a running BlueZ scan is gone, but
bleak's scanner does not notice: it goes silent, and its `stop()` raises. The only
reliable sign is silence, so when no advertisement arrives for `watchdog_s` while devices
are expected, the scanner is stopped (errors ignored) and a new one started. After
`unhealthy_after` recreations in a row without a single advertisement the adapter is
reported unhealthy (`edge-gateway status`: state `adapter-unhealthy`) until one arrives.
A GATT device that is connected is not expected to advertise (most stop while connected):
a site whose only devices are connected ones is silent, and healthy.

bleak allows one discovery per adapter and process (a second fails with
org.bluez.Error.InProgress), so GATT clients do not scan for their devices: they wait
here for the `BLEDevice` this scanner reported and connect with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog
from bleak import BleakScanner
from bleak.backends.device import BLEDevice

from drivers.base import DriverStats
from drivers.ble.config import BleDriverConfig
from gateway.backoff import Backoff
from gateway.errors import GatewayError
from gateway.logs import RateLimitedLog

log = structlog.get_logger("drivers.ble")

OnAdvert = Callable[[BLEDevice, Any], None]

_adapters_in_use: set[str] = set()

_START_TIMEOUT_S = 10.0
"""Deadline of a scan start; what BlueZ has not answered by then it is not going to."""


class AdapterBusy(GatewayError):
    """Another driver of this gateway already scans on the adapter."""


class AdapterScanner:
    """Scans on one adapter until cancelled; `on_advert` runs on the event loop and must not
    raise (bleak would only log it): it should only record what it got."""

    def __init__(self, config: BleDriverConfig, stats: DriverStats, on_advert: OnAdvert) -> None:
        self.config = config
        self.stats = stats
        self._on_advert = on_advert
        self._gatt = {device.address for device in config.gatt}
        self._connected: set[str] = set()
        """GATT devices connected now (`GattPoller` says so)."""
        self._devices: dict[str, BLEDevice] = {}
        self._seen: dict[str, asyncio.Event] = {}
        self._last_heard = 0.0
        self._heard_others = False
        """An advertisement came from a device that is not a GATT one."""
        self._failures = 0
        self._rate_limited = RateLimitedLog(log)
        self._log = log.bind(driver=config.name, adapter=config.adapter)

    async def device(self, address: str) -> BLEDevice:
        """The latest `BLEDevice` the scanner reported for `address`; waits until there is one."""
        while address not in self._devices:
            await self._seen.setdefault(address, asyncio.Event()).wait()
        return self._devices[address]

    def connected(self, address: str, now: bool) -> None:
        """A GATT device's connection began (`now` True) or ended."""
        if now:
            self._connected.add(address)
        else:
            self._connected.discard(address)
            self._last_heard = max(self._last_heard, time.monotonic())  # silence counts anew

    def forget(self, address: str) -> None:
        """Drop a device whose object went away (a connect said "not found"): wait for a new one."""
        self._devices.pop(address, None)
        if address in self._seen:
            self._seen[address].clear()

    async def run(self) -> None:
        if self.config.adapter in _adapters_in_use:
            raise AdapterBusy(
                f"adapter {self.config.adapter} is already used by another ble driver; "
                "BlueZ allows one scan per adapter: merge the two drivers into one"
            )
        _adapters_in_use.add(self.config.adapter)
        try:
            await self._keep_scanning()
        finally:
            _adapters_in_use.discard(self.config.adapter)

    async def _keep_scanning(self) -> None:
        backoff = Backoff(1.0, 30.0)
        while True:
            scanner = BleakScanner(
                detection_callback=self._detected,
                scanning_mode=self.config.scanning,
                bluez=_bluez_args(self.config),
            )
            problem = await self._start(scanner)
            if problem is not None:
                self._failed(problem)
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            if self._failures < self.config.unhealthy_after:
                self.stats.state = "scanning"
            self._log.info("BLE scanning started", mode=self.config.scanning)
            self._last_heard = time.monotonic()
            try:
                await self._watch()
            finally:
                with contextlib.suppress(Exception):  # raises after a power cycle or restart
                    async with asyncio.timeout(5.0):
                        await scanner.stop()
            self.stats.bump("scanner_restarts")
            self._failed(
                f"no advertisement on {self.config.adapter} for {self.config.watchdog_s:g} s; "
                "recreating the scanner"
            )

    async def _start(self, scanner: BleakScanner) -> str | None:
        """Start scanning; None, or why it did not start (the caller retries with backoff).

        BlueZ answers StartDiscovery in milliseconds; a bluetoothd that hangs answers late,
        or with an error when it restarts. A start past `_START_TIMEOUT_S` is counted
        (`scan_start_timeouts`) and reported, but not abandoned: BlueZ opens a discovery
        session for a start it answers late, and every new start on bleak's connection
        would then fail with InProgress for as long as the gateway runs.
        """
        start = asyncio.ensure_future(scanner.start())
        try:
            done, _ = await asyncio.wait((start,), timeout=_START_TIMEOUT_S)
            if not done:
                self.stats.bump("scan_start_timeouts")
                self._failed(
                    f"starting the scan on {self.config.adapter} got no answer from BlueZ "
                    f"within {_START_TIMEOUT_S:g} s; still waiting for it"
                )
            await start
        except Exception as exc:  # BleakError, D-Bus errors: adapter missing, off, busy
            return f"cannot start scanning on {self.config.adapter}: {exc}"
        finally:
            start.cancel()  # when we are cancelled; a no-op once it is done
        return None

    async def _watch(self) -> None:
        """Return when the scanner has been silent for `watchdog_s` while devices are expected."""
        limit = self.config.watchdog_s
        if limit == 0:
            await asyncio.Event().wait()  # no watchdog: scan until cancelled
        while True:
            silent = time.monotonic() - self._last_heard
            if silent >= limit and self._expected:
                return
            await asyncio.sleep(limit - silent if silent < limit else limit / 4)

    @property
    def _expected(self) -> bool:
        """Whether silence means a dead scan: some device should be advertising. A passing
        phone says little where GATT devices are configured: they are what matters there."""
        config = self.config
        if config.devices or config.allow.addresses or self._gatt - self._connected:
            return True
        return self._heard_others and not self._gatt

    def _detected(self, device: BLEDevice, data: Any) -> None:
        self._last_heard = time.monotonic()
        if self._failures:
            self._failures = 0
            self.stats.state = "scanning"
            self._log.info("BLE advertisements flow again")
        address = device.address.upper()
        if address in self._gatt:  # only these: phones alone bring a new address every minute
            self._devices[address] = device
            self._seen.setdefault(address, asyncio.Event()).set()
        else:
            self._heard_others = True
        self._on_advert(device, data)

    def _failed(self, message: str) -> None:
        """Count a failure in a row (start refused, or silence); enough of them: unhealthy."""
        self._failures += 1
        if self._failures >= self.config.unhealthy_after:
            self.stats.state = "adapter-unhealthy"
            message += (
                f" ({self._failures} failures in a row: the adapter looks unhealthy; "
                "check `bluetoothctl show`, rfkill and dmesg)"
            )
        self.stats.failed(message)
        self._rate_limited.warning("scanner", message, driver=self.config.name)


def _bluez_args(config: BleDriverConfig) -> Any:
    """bleak's BlueZ arguments: the adapter; for passive scanning, the advertisement monitor's
    patterns (BlueZ forwards only advertisements that match one), one per known format."""
    args: dict[str, Any] = {"adapter": config.adapter}
    if config.scanning == "passive":
        from bleak.assigned_numbers import AdvertisementDataType
        from bleak.backends.bluezdbus.advertisement_monitor import OrPattern

        args["or_patterns"] = [
            OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc"),  # BTHome
            OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\x1a\x18"),  # pvvx, ATC
            OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x99\x04"),  # Ruuvi
        ]
    return args
