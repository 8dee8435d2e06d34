"""A private D-Bus "system bus" for the fake BlueZ, and the environment that points bleak at it.

`dbus-daemon` runs with its own configuration (a permissive policy, a socket in a
temporary folder); the fake and the gateway find it through DBUS_SYSTEM_BUS_ADDRESS, so
nothing here ever talks to the machine's real system bus. A `bluetoothctl` stub that
prints version 5.66 goes first on PATH: bleak asks it for the BlueZ version before a
connect.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from edge_gateway_sim.lifetime import Managed, stop_process

_REAL_SYSTEM_BUS = "/run/dbus/system_bus_socket"
_PR_SET_PDEATHSIG = 1

_CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
  </policy>
</busconfig>
"""

_BLUETOOTHCTL = """\
#!/bin/sh
# Stub for bleak's BlueZ version check; the fake BlueZ behaves like 5.66.
echo "bluetoothctl: 5.66"
"""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies, even by
    SIGKILL, so a killed simulator or test run never leaves a dbus-daemon behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class PrivateBus(Managed):
    """`with PrivateBus() as bus:` runs a dbus-daemon until the block ends (also on errors)."""

    def __init__(self, directory: Path | None = None) -> None:
        self._own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="fake-bluez-"))
        self.socket = self.directory / "system_bus_socket"
        self.bin = self.directory / "bin"
        self.address = f"unix:path={self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment for a process that should use this bus as its system bus (the gateway)."""
        return {
            "DBUS_SYSTEM_BUS_ADDRESS": self.address,
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def start(self) -> None:
        if str(self.socket) == _REAL_SYSTEM_BUS:
            raise ValueError("the fake BlueZ must never use the real system bus")
        daemon = shutil.which("dbus-daemon")
        if daemon is None:
            raise FileNotFoundError(
                "dbus-daemon is not installed: apt-get install dbus-daemon (scripts/bootstrap.sh)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.bin.mkdir(exist_ok=True)
        stub = self.bin / "bluetoothctl"
        stub.write_text(_BLUETOOTHCTL)
        stub.chmod(0o755)
        config = self.directory / "bus.conf"
        config.write_text(_CONFIG.format(socket=self.socket))
        self.process = subprocess.Popen(
            [daemon, f"--config-file={config}", "--nofork", "--print-address"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a harmless fd-limit warning in containers
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        assert self.process.stdout is not None
        if not self.process.stdout.readline():  # printed once the socket listens
            code = self.process.wait()
            raise RuntimeError(f"dbus-daemon exited with status {code} at start-up")

    def close(self) -> None:
        stop_process(self.process, timeout=5)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
