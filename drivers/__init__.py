"""Sources of readings: one package per transport, each with its decoders.

`create_driver` is the registry: it imports a transport only when a configuration
uses it, so a gateway without BLE never loads the BLE stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drivers.base import Driver, Sink
    from gateway.config import DriverConfig


def create_driver(config: DriverConfig, gateway_id: str, sink: Sink) -> Driver:
    match config.type:
        case "mqtt":
            from drivers.mqtt.source import MqttSource

            return MqttSource(config, gateway_id, sink)
        case "ble":
            from drivers.ble.source import BleSource

            return BleSource(config, gateway_id, sink)
        case "serial":
            from drivers.serial.modbus_config import ModbusRtuConfig

            if isinstance(config, ModbusRtuConfig):
                from drivers.serial.modbus import ModbusSource

                return ModbusSource(config, gateway_id, sink)
            from drivers.serial.source import SerialLineSource

            return SerialLineSource(config, gateway_id, sink)
    raise AssertionError(f"no driver for type {config.type!r}")  # config validation prevents it
