"""Serial devices on pseudo-terminals, for `edge-gateway-sim serial` and the tests.

- `pty_port.py`: a pty behind a stable symlink, with unplug and replug.
- `models.py`: what devices say (JSON lines, key=value lines, an NMEA GPS).
- `registry.py`: model name -> class. Adding a model = a `DeviceModel` subclass
  and one line in `registry.MODELS`.
- `scenario.py`: the scenario file (devices, symlink paths, models, faults).
- `sim.py`: `SerialSim`, which runs a scenario; faults on a schedule or on demand.
"""
