"""One connectable GATT device: connect, read at an interval, take notifications, reconnect.

Each device runs in its own task, so a device that is out of range, refuses, or hangs in
a call delays nobody else; every GATT call (connect, StartNotify, read) has the device's
`connect_timeout_s` as its deadline. It connects with the `BLEDevice` the adapter's
scanner reported (a connect by address string would start a second discovery, which
BlueZ refuses while the scanner runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import structlog
from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDeviceNotFoundError, BleakError

from drivers.base import DriverStats
from drivers.ble.config import Characteristic, GattDevice
from drivers.ble.scanner import AdapterScanner
from gateway.backoff import Backoff
from gateway.errors import DecodeError
from gateway.logs import RateLimitedLog
from gateway.model import Reading, Value, utc_from_epoch

log = structlog.get_logger("drivers.ble")

Emit = Callable[[Sequence[Reading]], None]
T = TypeVar("T")


class GattPoller:
    """Keeps one GATT device connected and turns its values into readings for `emit`."""

    def __init__(
        self,
        device: GattDevice,
        source: str,
        scanner: AdapterScanner,
        stats: DriverStats,
        emit: Emit,
    ) -> None:
        self.device = device
        self._source = source
        self._scanner = scanner
        self._stats = stats
        self._emit = emit
        self._name = device.name or device.address
        self._rate_limited = RateLimitedLog(log)
        self._log = log.bind(driver=source, device=self._name)

    async def run(self) -> None:
        backoff = Backoff(self.device.reconnect_min_s, self.device.reconnect_max_s)
        while True:
            ble_device = await self._scanner.device(self.device.address)
            started = time.monotonic()
            try:
                await self._session(ble_device)
                problem = "connection lost"
            except (BleakError, TimeoutError, OSError, EOFError) as exc:
                if isinstance(exc, BleakDeviceNotFoundError):
                    self._scanner.forget(self.device.address)
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            delay = backoff.delay_after(started)
            self._stats.bump("gatt_failures")
            self._stats.failed(f"GATT device {self._name}: {problem}")
            self._rate_limited.warning(
                f"gatt:{self.device.address}",
                "GATT device not connected; retrying with backoff",
                driver=self._source,
                device=self._name,
                address=self.device.address,
                error=problem,
                retry_in_s=round(delay, 2),
                hint="out of range, switched off, or connected to another central",
            )
            await asyncio.sleep(delay)

    async def _session(self, ble_device: BLEDevice) -> None:
        """One connection, until the device disconnects (returns) or a GATT call fails."""
        lost = asyncio.Event()
        client = BleakClient(
            ble_device,
            disconnected_callback=lambda _client: lost.set(),
            timeout=self.device.connect_timeout_s,
        )
        await self._answer("connect", client.connect())
        self._scanner.connected(self.device.address, True)
        try:
            self._stats.bump("gatt_connects")
            self._log.info("GATT device connected", address=self.device.address)
            present = self._present(client)
            for characteristic in present:
                if characteristic.notify:
                    notified = self._on_notify(characteristic)
                    await self._answer(
                        f"StartNotify {characteristic.uuid}",
                        client.start_notify(characteristic.uuid, notified),
                    )
            readable = [c for c in present if c.read]
            while not lost.is_set():
                if readable:
                    await self._read(client, readable)
                try:
                    async with asyncio.timeout(self.device.interval_s):
                        await lost.wait()
                except TimeoutError:
                    pass
        finally:
            self._scanner.connected(self.device.address, False)
            if not lost.is_set():  # errors here must not replace the one (or the cancel) at hand
                with contextlib.suppress(BleakError, TimeoutError, OSError, EOFError):
                    async with asyncio.timeout(10.0):
                        await client.disconnect()

    def _present(self, client: BleakClient) -> list[Characteristic]:
        """The configured characteristics the device has. A missing one (a wrong UUID, other
        firmware) is a configuration problem, said at each connect: it must not end the
        session, or it would cost the device's other values too."""
        present = []
        for characteristic in self.device.characteristics:
            try:
                found = client.services.get_characteristic(characteristic.uuid)
            except BleakError:  # several with this UUID: bleak's calls say which is meant
                present.append(characteristic)
                continue
            if found is not None:
                present.append(characteristic)
                continue
            self._stats.bump("gatt_missing")
            self._stats.failed(
                f"GATT device {self._name} has no characteristic {characteristic.uuid}"
            )
            self._log.error(
                "GATT device has no such characteristic; it is skipped, the others are read",
                address=self.device.address,
                uuid=characteristic.uuid,
                services=sorted(service.uuid for service in client.services),
                hint="check the uuid against the device's services (bluetoothctl: connect, "
                "then menu gatt, list-attributes)",
            )
        return present

    async def _answer(self, what: str, call: Awaitable[T]) -> T:
        """`call` with `connect_timeout_s` as its deadline: BlueZ may never answer one (a
        hanging bluetoothd, a device that went silent mid-call). A timeout is counted
        (`gatt_timeouts`) and ends the session, and `run` reconnects with backoff."""
        limit = self.device.connect_timeout_s
        try:
            async with asyncio.timeout(limit):
                return await call
        except TimeoutError:
            self._stats.bump("gatt_timeouts")
            raise TimeoutError(f"{what} got no answer within {limit:g} s") from None

    async def _read(self, client: BleakClient, characteristics: list[Characteristic]) -> None:
        values: dict[str, Value] = {}
        units: dict[str, str] = {}
        for characteristic in characteristics:
            call = client.read_gatt_char(characteristic.uuid)
            data = bytes(await self._answer(f"read {characteristic.uuid}", call))
            value = self._decode(characteristic, data)
            if value is not None:
                fmt = characteristic.format
                values[fmt.name] = value
                if fmt.unit:
                    units[fmt.name] = fmt.unit
        if values:
            self._emit([self._reading(values, units)])

    def _on_notify(
        self, characteristic: Characteristic
    ) -> Callable[[BleakGATTCharacteristic, bytearray], None]:
        """bleak only logs a callback's exception: this callback never raises."""
        fmt = characteristic.format

        def notified(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            value = self._decode(characteristic, bytes(data))
            if value is not None:
                self._stats.bump("notifications")
                units = {fmt.name: fmt.unit} if fmt.unit else {}
                self._emit([self._reading({fmt.name: value}, units)])

        return notified

    def _decode(self, characteristic: Characteristic, data: bytes) -> Value | None:
        try:
            return characteristic.format.decode(data)
        except Exception as exc:  # a decoder bug is counted like bad input, never lost
            if not isinstance(exc, DecodeError):
                self._log.exception("GATT decoder failed", uuid=characteristic.uuid)
            self._stats.malformed += 1
            self._rate_limited.warning(
                f"malformed:{self.device.address}:{characteristic.uuid}",
                "malformed GATT value; skipped",
                driver=self._source,
                device=self._name,
                uuid=characteristic.uuid,
                error=f"{type(exc).__name__}: {exc}",
                sample_hex=data[:64].hex(),
            )
            return None

    def _reading(self, values: dict[str, Value], units: dict[str, str]) -> Reading:
        return Reading(
            device=self._name,
            ts=utc_from_epoch(time.time()),
            values=values,
            source=self._source,
            units=units,
            tags={"address": self.device.address, "format": "gatt", **self.device.tags},
        )
