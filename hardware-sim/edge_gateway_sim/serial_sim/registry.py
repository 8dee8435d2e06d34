"""The device models a scenario can name: model name -> "module:Class".

To add a model, write a `DeviceModel` subclass (see `models.py` for the contract:
`frame()`, optionally `answer()` and `corrupt()`, options with defaults in
`OPTIONS`) and add one line to `MODELS`. Classes are imported only when a
scenario uses them, so a model may depend on a library the others do not need.
"""

from __future__ import annotations

import importlib

from edge_gateway_sim.serial_sim.models import DeviceModel, ModelError

MODELS: dict[str, str] = {
    "json-sensor": "edge_gateway_sim.serial_sim.models:JsonLinesSensor",
    "kv-sensor": "edge_gateway_sim.serial_sim.models:KvSensor",
    "nmea-gps": "edge_gateway_sim.serial_sim.models:NmeaGps",
    "modbus-meter": "edge_gateway_sim.modbus_meter:ModbusMeter",
}


def model_class(name: str) -> type[DeviceModel]:
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    module, _, attribute = MODELS[name].partition(":")
    cls: type[DeviceModel] = getattr(importlib.import_module(module), attribute)
    return cls
