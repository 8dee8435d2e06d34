"""The D-Bus objects of the fake BlueZ: Adapter1, Device1, GattService1, GattCharacteristic1.

Only what bleak's BlueZ backend reads or calls, with BlueZ's names, signatures and error
names. The annotations are D-Bus signatures (dbus-fast reads them), hence no
`from __future__ import annotations` here. Behaviour (what a connect does, when a device
refuses) lives in `FakeBlueZ`; these classes hold state and call back into it.
"""

# ruff: noqa: F722, F821

from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast import DBusError, Variant
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, method

ERROR_FAILED = "org.bluez.Error.Failed"
ERROR_IN_PROGRESS = "org.bluez.Error.InProgress"
ERROR_NOT_READY = "org.bluez.Error.NotReady"
ERROR_NOT_CONNECTED = "org.bluez.Error.NotConnected"


def _fixed(name: str, signature: str, value: Any) -> Any:
    """A read-only property that BlueZ reports and the fake never changes (Paired: false)."""

    def get(self: ServiceInterface) -> Any:
        return value

    return _read_only(get, name, signature)


def _mirror(name: str, signature: str, attribute: str) -> Any:
    """A read-only property that shows one attribute of the object (Connected: `connected`)."""

    def get(self: ServiceInterface) -> Any:
        return getattr(self, attribute)

    return _read_only(get, name, signature)


def _read_only(get: Callable[[ServiceInterface], Any], name: str, signature: str) -> Any:
    """dbus-fast reads the signature from the getter's return annotation, and calls the
    getter through the attribute named like it: the name must be the class attribute's."""
    get.__name__ = name
    get.__annotations__["return"] = signature
    return dbus_property(access=PropertyAccess.READ)(get)


def device_path(adapter: str, address: str) -> str:
    """BlueZ's object path of a device: /org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF."""
    return f"/org/bluez/{adapter}/dev_{address.replace(':', '_')}"


class Adapter(ServiceInterface):
    """org.bluez.Adapter1. Discovery is per client (D-Bus sender), as in bluetoothd: a second
    StartDiscovery from the same client is InProgress, a StopDiscovery without one fails.
    `stall` is awaited before StartDiscovery answers: the fake's hook for a hanging bluetoothd."""

    def __init__(
        self,
        name: str,
        address: str,
        caller: Callable[[], str],
        stall: Callable[[str], Awaitable[None]],
    ) -> None:
        super().__init__("org.bluez.Adapter1")  # sets `name`, the interface's name
        self.adapter = name
        self.address = address
        self.powered = True
        self.sessions: set[str] = set()
        self._caller = caller
        self._stall = stall

    @property
    def discovering(self) -> bool:
        return self.powered and bool(self.sessions)

    def start(self, client: str) -> None:
        if not self.powered:
            raise DBusError(ERROR_NOT_READY, "Resource Not Ready")
        if client in self.sessions:
            raise DBusError(ERROR_IN_PROGRESS, "Operation already in progress")
        was = self.discovering
        self.sessions.add(client)
        if not was:
            self.emit_properties_changed({"Discovering": True})

    def stop(self, client: str) -> None:
        if not self.powered:
            raise DBusError(ERROR_NOT_READY, "Resource Not Ready")
        if client not in self.sessions:
            raise DBusError(ERROR_FAILED, "No discovery started")
        self.sessions.discard(client)
        if not self.discovering:
            self.emit_properties_changed({"Discovering": False})

    def set_powered(self, powered: bool) -> None:
        """Power off ends every discovery; power on does not restart any (as in bluetoothd)."""
        self.powered = powered
        if not powered:
            self.sessions.clear()
        self.emit_properties_changed({"Powered": powered, "Discovering": self.discovering})

    @method()
    def SetDiscoveryFilter(self, properties: "a{sv}") -> None:
        if not self.powered:
            raise DBusError(ERROR_NOT_READY, "Resource Not Ready")

    @method()
    async def StartDiscovery(self) -> None:
        client = self._caller()  # before awaiting: the next call changes it
        await self._stall("StartDiscovery")
        self.start(client)

    @method()
    def StopDiscovery(self) -> None:
        self.stop(self._caller())

    @method()
    def RemoveDevice(self, device: "o") -> None:
        raise DBusError("org.bluez.Error.DoesNotExist", "Does Not Exist")

    Address = _mirror("Address", "s", "address")
    AddressType = _fixed("AddressType", "s", "public")
    Name = _fixed("Name", "s", "fake-bluez")
    Alias = _fixed("Alias", "s", "fake-bluez")
    Discovering = _mirror("Discovering", "b", "discovering")
    Roles = _fixed("Roles", "as", ["central", "peripheral"])
    UUIDs = _fixed("UUIDs", "as", [])

    @dbus_property()
    def Powered(self) -> "b":
        return self.powered

    @Powered.setter
    def Powered(self, value: "b") -> None:
        self.set_powered(value)


class MonitorManager(ServiceInterface):
    """org.bluez.AdvertisementMonitorManager1: a registered monitor is a passive scan.

    The fake forwards every advertisement to a passive scanner; it does not evaluate the
    monitor's or_patterns (the gateway's decoders ignore other formats anyway)."""

    def __init__(self, adapter: Adapter, caller: Callable[[], str]) -> None:
        super().__init__("org.bluez.AdvertisementMonitorManager1")
        self._adapter = adapter
        self._caller = caller

    @method()
    def RegisterMonitor(self, application: "o") -> None:
        self._adapter.start(f"{self._caller()}:{application}")

    @method()
    def UnregisterMonitor(self, application: "o") -> None:
        self._adapter.stop(f"{self._caller()}:{application}")

    SupportedMonitorTypes = _fixed("SupportedMonitorTypes", "as", ["or_patterns"])
    SupportedFeatures = _fixed("SupportedFeatures", "as", [])


class Device(ServiceInterface):
    """org.bluez.Device1 of one remote device; `connect`/`disconnect` are the fake's hooks."""

    def __init__(
        self,
        adapter: str,
        address: str,
        name: str | None,
        uuids: list[str],
        connect: Callable[["Device"], Awaitable[None]],
        disconnect: Callable[["Device"], None],
    ) -> None:
        super().__init__("org.bluez.Device1")
        self.adapter = adapter
        self.address = address
        self.path = device_path(adapter, address)
        self.local_name = name
        self.uuids = uuids
        self.rssi = -127
        self.service_data: dict[str, bytes] = {}
        self.manufacturer_data: dict[int, bytes] = {}
        self.connected = False
        self.services_resolved = False
        self._connect = connect
        self._disconnect = disconnect

    def advertise(self, rssi: int, service_data: dict[str, bytes], manufacturer: dict[int, bytes]):
        """A received packet: BlueZ signals only what changed."""
        changed: dict[str, Any] = {}
        if rssi != self.rssi:
            self.rssi = changed["RSSI"] = rssi
        if service_data and service_data != self.service_data:
            self.service_data = service_data
            changed["ServiceData"] = self.ServiceData
        if manufacturer and manufacturer != self.manufacturer_data:
            self.manufacturer_data = manufacturer
            changed["ManufacturerData"] = self.ManufacturerData
        if changed:
            self.emit_properties_changed(changed)

    def set_connection(self, connected: bool, resolved: bool) -> None:
        changed: dict[str, Any] = {}
        if connected != self.connected:
            self.connected = changed["Connected"] = connected
        if resolved != self.services_resolved:
            self.services_resolved = changed["ServicesResolved"] = resolved
        if changed:
            self.emit_properties_changed(changed)

    @method()
    async def Connect(self) -> None:
        await self._connect(self)

    @method()
    def Disconnect(self) -> None:
        self._disconnect(self)

    @method()
    def Pair(self) -> None:
        raise DBusError("org.bluez.Error.NotSupported", "Pairing is not simulated")

    Address = _mirror("Address", "s", "address")
    AddressType = _fixed("AddressType", "s", "public")
    Paired = _fixed("Paired", "b", False)
    Bonded = _fixed("Bonded", "b", False)
    Trusted = _fixed("Trusted", "b", False)
    Blocked = _fixed("Blocked", "b", False)
    LegacyPairing = _fixed("LegacyPairing", "b", False)
    Connected = _mirror("Connected", "b", "connected")
    ServicesResolved = _mirror("ServicesResolved", "b", "services_resolved")
    RSSI = _mirror("RSSI", "n", "rssi")

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":
        return self.local_name or ""

    @dbus_property(access=PropertyAccess.READ)
    def Alias(self) -> "s":
        return self.local_name or self.address.replace(":", "-")

    @dbus_property(access=PropertyAccess.READ)
    def Adapter(self) -> "o":
        return f"/org/bluez/{self.adapter}"

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> "as":
        return sorted({*self.uuids, *self.service_data})

    @dbus_property(access=PropertyAccess.READ)
    def ServiceData(self) -> "a{sv}":
        return {uuid: Variant("ay", data) for uuid, data in self.service_data.items()}

    @dbus_property(access=PropertyAccess.READ)
    def ManufacturerData(self) -> "a{qv}":
        return {cid: Variant("ay", data) for cid, data in self.manufacturer_data.items()}


class GattService(ServiceInterface):
    """org.bluez.GattService1 at <device>/serviceXXXX (bleak parses the handle from the path)."""

    def __init__(self, device: str, handle: int, uuid: str) -> None:
        super().__init__("org.bluez.GattService1")
        self.path = f"{device}/service{handle:04x}"
        self.device = device
        self.uuid = uuid

    UUID = _mirror("UUID", "s", "uuid")
    Device = _mirror("Device", "o", "device")
    Primary = _fixed("Primary", "b", True)
    Includes = _fixed("Includes", "ao", [])


class GattCharacteristic(ServiceInterface):
    """org.bluez.GattCharacteristic1 at <service>/charXXXX; notifications are StartNotify +
    PropertiesChanged(Value), bleak's default (AcquireNotify is not simulated). `stall` is
    awaited before StartNotify answers: the fake's hook for a hanging bluetoothd."""

    def __init__(
        self,
        service: GattService,
        handle: int,
        uuid: str,
        read: Callable[[], bytes],
        stall: Callable[[str], Awaitable[None]],
    ) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self.path = f"{service.path}/char{handle:04x}"
        self.service = service.path
        self.uuid = uuid
        self.value = b""
        self.notifying = False
        self._read = read
        self._stall = stall

    def notify(self, value: bytes) -> None:
        self.value = value
        if self.notifying:
            self.emit_properties_changed({"Value": value})

    @method()
    def ReadValue(self, options: "a{sv}") -> "ay":
        self.value = self._read()
        return self.value

    @method()
    async def StartNotify(self) -> None:
        await self._stall("StartNotify")
        if not self.notifying:
            self.notifying = True
            self.emit_properties_changed({"Notifying": True})

    @method()
    def StopNotify(self) -> None:
        if self.notifying:
            self.notifying = False
            self.emit_properties_changed({"Notifying": False})

    UUID = _mirror("UUID", "s", "uuid")
    Service = _mirror("Service", "o", "service")
    Value = _mirror("Value", "ay", "value")
    Notifying = _mirror("Notifying", "b", "notifying")
    Flags = _fixed("Flags", "as", ["read", "notify"])
    MTU = _fixed("MTU", "q", 247)
