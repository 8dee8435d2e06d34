"""Scenario files: which serial devices exist, where their symlinks are, and their faults.

A scenario is YAML (or JSON, which YAML reads too):

    seed: 1                      # optional; the random noise and sensor jitter
    devices:
      - name: thermo             # unique
        path: dev/thermo         # the stable symlink the gateway opens; relative to the file
        model: json-sensor       # a name in registry.MODELS
        plugged: true            # false: absent at start, plug it with a fault
        options: {interval_s: 0.2}   # the model's own options
    faults:                      # optional; times in seconds since the start
      - {at_s: 5, device: thermo, fault: unplug, duration_s: 2}  # gone, back after 2 s
      - {at_s: 8, device: thermo, fault: noise, bytes: 300}      # random bytes, then a delimiter
      - {at_s: 9, device: thermo, fault: bad_frames, count: 3}   # damaged copies of the last frame
      - {at_s: 10, device: thermo, fault: stall, duration_s: 3}  # the line goes quiet
      - {at_s: 12, device: thermo, fault: overlong, bytes: 5000} # a line with no end in sight
      - {at_s: 14, device: thermo, fault: plug}                  # plug in (e.g. plugged: false)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FAULTS = frozenset({"unplug", "plug", "noise", "bad_frames", "stall", "overlong"})


class ScenarioError(ValueError):
    """The scenario cannot be used; the message says where and what to fix."""


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    name: str
    path: Path
    model: str
    plugged: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FaultSpec:
    at_s: float
    device: str
    fault: str
    duration_s: float | None = None
    count: int = 1
    bytes: int = 256


@dataclass(frozen=True, slots=True)
class Scenario:
    devices: tuple[DeviceSpec, ...]
    faults: tuple[FaultSpec, ...] = ()
    seed: int = 1


def load_scenario(path: Path) -> Scenario:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: cannot read the scenario: {exc}") from None
    return parse_scenario(data, path.parent, str(path))


def parse_scenario(data: Any, base_dir: Path, where: str = "scenario") -> Scenario:
    top = _mapping(data, where, {"devices", "faults", "seed"})
    devices = []
    for i, item in enumerate(_list(top.get("devices"), f"{where}: devices")):
        at = f"{where}: devices[{i}]"
        spec = _mapping(item, at, {"name", "path", "model", "plugged", "options"})
        for key in ("name", "path", "model"):
            if not isinstance(spec.get(key), str):
                raise ScenarioError(f"{at}.{key}: required, a string")
        path = Path(spec["path"])
        devices.append(
            DeviceSpec(
                name=spec["name"],
                path=path if path.is_absolute() else base_dir / path,
                model=spec["model"],
                plugged=bool(spec.get("plugged", True)),
                options=_mapping(spec.get("options", {}), f"{at}.options", None),
            )
        )
    names = [d.name for d in devices]
    if not devices or len(set(names)) != len(names):
        raise ScenarioError(f"{where}: devices: give at least one, with unique names")
    faults = []
    for i, item in enumerate(_list(top.get("faults", []), f"{where}: faults")):
        at = f"{where}: faults[{i}]"
        spec = _mapping(item, at, {"at_s", "device", "fault", "duration_s", "count", "bytes"})
        if spec.get("device") not in names:
            raise ScenarioError(f"{at}.device: {spec.get('device')!r} is not a device's name")
        if spec.get("fault") not in FAULTS:
            raise ScenarioError(f"{at}.fault: one of {', '.join(sorted(FAULTS))}")
        try:
            faults.append(FaultSpec(**spec))
        except TypeError as exc:
            raise ScenarioError(f"{at}: {exc}") from None
    return Scenario(tuple(devices), tuple(sorted(faults, key=lambda f: f.at_s)), top.get("seed", 1))


def _mapping(data: Any, at: str, keys: set[str] | None) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ScenarioError(f"{at}: expected a mapping")
    unknown = sorted(set(data) - keys) if keys is not None else []
    if unknown:
        raise ScenarioError(
            f"{at}.{unknown[0]}: unknown key; known: {', '.join(sorted(keys or ()))}"
        )
    return data


def _list(data: Any, at: str) -> list[Any]:
    if not isinstance(data, list):
        raise ScenarioError(f"{at}: expected a list")
    return data
