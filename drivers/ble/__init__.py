"""Bluetooth LE: advertisement scanning and GATT connections through BlueZ (bleak)."""
