"""A fake bluetoothd on a private D-Bus: simulated devices advertise through it, and bleak,
unmodified, scans and connects as it would with BlueZ.

It runs in the caller's event loop (`async with FakeBlueZ(bus.address) as bluez:`), so a
test controls devices and faults directly: `bluez.set_powered(False)`,
`await bluez.restart()`, `bluez.drop_connection(address)`, `device.in_range = False`,
`device.refuses = True`, `bluez.stalled.add("StartDiscovery")` (or "StartNotify": calls
that get no answer, as from a hanging bluetoothd, until `bluez.answer_stalled()` or a
restart). Only objects of the adapter and
devices bleak uses exist; every object is exported before the name org.bluez is claimed,
as bluetoothd does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Coroutine, Iterable
from types import TracebackType

from dbus_fast import BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus

from edge_gateway_sim.bluez.devices import SimDevice
from edge_gateway_sim.bluez.objects import (
    ERROR_FAILED,
    Adapter,
    Device,
    GattCharacteristic,
    GattService,
    MonitorManager,
)

BLUEZ = "org.bluez"


class FakeBlueZ:
    """bluetoothd as bleak sees it, for one adapter, with simulated devices."""

    def __init__(
        self,
        bus_address: str,
        devices: Iterable[SimDevice] = (),
        adapter: str = "hci0",
        adapter_address: str = "00:1A:7D:DA:71:13",
    ) -> None:
        if "system_bus_socket" in bus_address and "/run/dbus/" in bus_address:
            raise ValueError("the fake BlueZ must never use the real system bus")
        self.bus_address = bus_address
        self.adapter_name = adapter
        self.adapter_address = adapter_address
        self.devices = {d.address: d for d in devices}
        self.connects = 0
        self.refused = 0
        self._bus: MessageBus | None = None
        self._adapter: Adapter | None = None
        self._objects: dict[str, Device] = {}
        self._gatt: dict[str, list[GattService | GattCharacteristic]] = {}
        self.stalled: set[str] = set()
        """D-Bus methods whose calls get no answer until the fake stops."""
        self._caller = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._hanging: set[asyncio.Future[None]] = set()

    async def __aenter__(self) -> FakeBlueZ:
        await self._bring_up()
        for device in self.devices.values():
            self._spawn(self._advertise(device))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._bring_down()

    @property
    def adapter(self) -> Adapter:
        assert self._adapter is not None, "FakeBlueZ is not running"
        return self._adapter

    # --- faults ---------------------------------------------------------------------------

    def set_powered(self, powered: bool) -> None:
        """Adapter power off (discovery ends, connections drop, devices go) or on again."""
        if not powered:
            for address in list(self._objects):
                self._remove_device(address)
        self.adapter.set_powered(powered)

    async def restart(self, down_s: float = 1.0) -> None:
        """bluetoothd restarts: every object goes, the name is released; then all comes back
        from a new bus connection (a new process, as far as clients can tell)."""
        self._bring_down()
        await asyncio.sleep(down_s)
        await self._bring_up()

    def set_in_range(self, address: str, in_range: bool) -> None:
        """A device moves out of range (no adverts, its connection drops) or comes back."""
        self.devices[address].in_range = in_range
        if not in_range:
            self.drop_connection(address)

    def drop_connection(self, address: str) -> None:
        """The link to a connected device is lost (it rebooted, or moved off for a moment)."""
        device = self._objects.get(address)
        if device is not None and device.connected:
            self._disconnected(device)

    # --- lifecycle ------------------------------------------------------------------------

    async def _bring_up(self) -> None:
        bus = await MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM).connect()
        bus.add_message_handler(self._remember_caller)
        caller = self._current_caller
        adapter = Adapter(self.adapter_name, self.adapter_address, caller, self._stall)
        path = f"/org/bluez/{self.adapter_name}"
        bus.export(path, adapter)
        bus.export(path, MonitorManager(adapter, caller))
        self._bus, self._adapter = bus, adapter
        await bus.request_name(BLUEZ)

    def _bring_down(self) -> None:
        if self._bus is None:
            return
        for call in self._hanging:
            call.cancel()
        for address in list(self._objects):
            self._remove_device(address)
        self._bus.unexport(f"/org/bluez/{self.adapter_name}")
        self._bus.disconnect()
        self._bus = self._adapter = None

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def answer_stalled(self) -> None:
        """Answer the calls that hang, and stall no more: a bluetoothd that was slow, not dead."""
        self.stalled.clear()
        for call in self._hanging:
            if not call.done():
                call.set_result(None)

    async def _stall(self, method: str) -> None:
        """A call of a method in `stalled` hangs until answered, or the fake stops (or restarts)."""
        if method in self.stalled:
            call = asyncio.get_running_loop().create_future()
            self._hanging.add(call)
            try:
                await call
            finally:
                self._hanging.discard(call)

    def _current_caller(self) -> str:
        return self._caller

    def _remember_caller(self, message: Message) -> None:
        """dbus-fast does not pass the sender to a method; discovery sessions need it."""
        if message.message_type == MessageType.METHOD_CALL and message.sender:
            self._caller = message.sender

    # --- advertising ----------------------------------------------------------------------

    async def _advertise(self, device: SimDevice) -> None:
        while True:
            await asyncio.sleep(device.interval_s)
            if self._bus is None or not device.in_range or not self.adapter.discovering:
                continue
            device.sent += 1
            service_data, manufacturer = device.payload(device.sent)
            obj = self._objects.get(device.address)
            if obj is None:
                obj = Device(
                    self.adapter_name,
                    device.address,
                    device.name,
                    sorted(device.gatt.services) if device.gatt else [],
                    self._connect,
                    self._disconnected,
                )
                obj.rssi, obj.service_data, obj.manufacturer_data = (
                    device.rssi,
                    service_data,
                    manufacturer,
                )
                self._objects[device.address] = obj
                self._bus.export(obj.path, obj)
            elif not (device.quiet_when_connected and obj.connected):
                obj.advertise(device.rssi - device.sent % 3, service_data, manufacturer)

    def _remove_device(self, address: str) -> None:
        obj = self._objects.pop(address)
        if obj.connected:
            self._disconnected(obj)
        if self._bus is not None:
            self._bus.unexport(obj.path)

    # --- connections ----------------------------------------------------------------------

    async def _connect(self, obj: Device) -> None:
        device = self.devices[obj.address]
        if device.gatt is None:
            raise DBusError("org.bluez.Error.NotSupported", "Operation is not supported")
        if device.refuses:
            self.refused += 1
            raise DBusError(ERROR_FAILED, "le-connection-abort-by-remote")
        if not device.in_range:
            await asyncio.sleep(2.0)
            raise DBusError(ERROR_FAILED, "Page Timeout")
        if obj.connected:
            return
        self.connects += 1
        obj.set_connection(True, False)
        assert self._bus is not None
        objects: list[GattService | GattCharacteristic] = []
        handle = 0x000A
        for service_uuid, characteristics in sorted(device.gatt.services.items()):
            service = GattService(obj.path, handle, service_uuid)
            objects.append(service)
            handle += 1
            for uuid, value in sorted(characteristics.items()):
                reads = itertools.count(1)
                objects.append(
                    GattCharacteristic(
                        service, handle, uuid, lambda v=value, c=reads: v(next(c)), self._stall
                    )
                )
                handle += 2  # the value handle, then its CCCD
        for gatt in objects:
            self._bus.export(gatt.path, gatt)
        self._gatt[obj.address] = objects
        asyncio.get_running_loop().call_later(0.1, self._resolved, obj)
        notifying = [
            c for c in objects if isinstance(c, GattCharacteristic) and c.uuid in device.gatt.notify
        ]
        self._spawn(self._notify(obj, device, notifying))

    def _resolved(self, obj: Device) -> None:
        if obj.connected:
            obj.set_connection(True, True)

    async def _notify(
        self, obj: Device, device: SimDevice, characteristics: list[GattCharacteristic]
    ) -> None:
        assert device.gatt is not None
        n = 0
        while obj.connected:
            await asyncio.sleep(device.gatt.notify_interval_s)
            n += 1
            for characteristic in characteristics:
                if obj.connected:
                    characteristic.notify(device.gatt.value(characteristic.uuid, n))

    def _disconnected(self, obj: Device) -> None:
        for gatt in self._gatt.pop(obj.address, []):
            if self._bus is not None:
                with contextlib.suppress(Exception):
                    self._bus.unexport(gatt.path)
        obj.set_connection(False, False)
