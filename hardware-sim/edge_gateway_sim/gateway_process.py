"""Run the real gateway as a child process, as systemd would: for the demo, tests and benchmarks.

A child process (not a task in the test's own event loop) is what makes
SIGTERM and SIGKILL tests honest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO


def site_config(
    *,
    state_dir: Path,
    amqp_url: str,
    mqtt_port: int,
    exchange: str = "edge-gateway",
    gateway_id: str = "sim-gateway",
    site: str = "sim-site",
    prefix: str = "sensors",
    extra_amqp: str = "",
    max_bytes: str = "256MB",
    extra_buffer: str = "",
    extra_mqtt: str = "",
) -> str:
    """YAML for a gateway reading the simulated MQTT sensors and publishing to `amqp_url`."""
    return f"""\
gateway:
  id: {gateway_id}
  site: {site}
  state_dir: {state_dir}
buffer:
  max_bytes: {max_bytes}
{_indent(extra_buffer)}
amqp:
  url: "{amqp_url}"
  exchange: {exchange}
{_indent(extra_amqp)}
drivers:
  - type: mqtt
    name: sim-sensors
    host: 127.0.0.1
    port: {mqtt_port}
{_indent(extra_mqtt, 4)}
    subscriptions:
      - topic: "{prefix}/+/state"
        device: "{prefix}/{{device}}/state"
        timestamp: ts
        units: {{temperature: Cel, humidity: "%RH", battery: "%"}}
logging:
  format: json
"""


def _indent(text: str, by: int = 2) -> str:
    return "\n".join(" " * by + line for line in text.strip().splitlines())


class GatewayProcess:
    """`edge-gateway run --config FILE` in a child process, its output in a log file."""

    def __init__(
        self, config: Path, log: Path, env: dict[str, str] | None = None, mqtt: bool = True
    ) -> None:
        self.config = config
        self.ready_markers = [b'"gateway started"']
        if mqtt:
            self.ready_markers.append(b'"MQTT subscriptions active"')
        self.log = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, ready_timeout: float = 20.0) -> None:
        """Start, and wait until the gateway is ready: its buffer is open and, when it reads
        MQTT, its subscriptions are active (what a sensor publishes before that is not ours)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        self._log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
            start_new_session=True,  # a Ctrl-C meant for the parent is not ours to act on
        )
        deadline = time.monotonic() + ready_timeout
        while not all(marker in self.log.read_bytes()[offset:] for marker in self.ready_markers):
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited at start-up:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"gateway not started after {ready_timeout} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, as `systemctl stop` does; return the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._close_log()
        return code

    def kill(self) -> None:
        """SIGKILL: the crash, or a power cut as far as the process can tell."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self._close_log()

    def close(self) -> None:
        if self.running:
            self.kill()
        self._close_log()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
