"""A fake BlueZ on a private D-Bus, so that bleak runs unmodified without a radio.

`PrivateBus` runs the dbus-daemon (and provides a bluetoothctl stub); `FakeBlueZ` is
bluetoothd with simulated devices (`devices`) and faults, in the caller's event loop.
"""

from edge_gateway_sim.bluez.bus import PrivateBus
from edge_gateway_sim.bluez.fake import FakeBlueZ

__all__ = ["FakeBlueZ", "PrivateBus"]
