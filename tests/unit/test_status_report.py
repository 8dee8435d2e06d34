"""`edge-gateway status` before the gateway ever ran: it says which of two things is wrong."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from drivers.base import DriverStats
from gateway.buffer import Buffer
from gateway.cli import EXIT_CONFIG, EXIT_NOT_RUNNING, main
from gateway.config import AmqpSection, GatewaySection
from gateway.publisher import Publisher
from gateway.status import StatusWriter, format_status, read_status

REPO = Path(__file__).parents[2]


def test_a_state_dir_that_does_not_exist_is_named() -> None:
    shown = format_status(read_status(Path("/nonexistent/edge-gateway-state")))
    assert "/nonexistent/edge-gateway-state does not exist: check gateway.state_dir" in shown
    assert "gateway    no status file: the gateway has not run here" in shown


def test_a_state_dir_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    shown = format_status(read_status(tmp_path / "state"))
    assert f"{tmp_path / 'state'} is not a directory: check gateway.state_dir" in shown


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root, setpriv")
def test_a_state_dir_this_user_may_not_read_says_to_use_sudo(tmp_path: Path) -> None:
    """Not "the gateway has not run here": the service's directory is 0750, an admin's
    shell is not in its group."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "status.json").write_text("{}")
    state.chmod(0o700)
    tmp_path.chmod(0o755)
    show = f"from gateway.status import *; print(format_status(read_status(Path({str(state)!r}))))"
    shown = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         f"from pathlib import Path; {show}"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout  # fmt: skip
    assert f"gateway    cannot read {state / 'status.json'}: run status with sudo" in shown


def test_an_empty_state_dir_has_no_buffer_yet(tmp_path: Path) -> None:
    shown = format_status(read_status(tmp_path))
    assert "no buffer yet (the gateway has not run with this state_dir)" in shown


def test_status_needs_only_the_state_dir_not_the_services_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`${BROKER_HOST}` set by the unit's `Environment=` is unset in an admin's shell; and a
    file half edited elsewhere must not hide the status either."""
    monkeypatch.delenv("BROKER_HOST", raising=False)
    monkeypatch.delenv("GATEWAY_ID", raising=False)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway: {{id: '${{GATEWAY_ID}}', state_dir: {tmp_path / 'state'}}}\n"
        "amqp: {url: 'amqp://${BROKER_HOST}/', max_in_flight: lots}\n"
    )
    assert main(["status", "--config", str(config)]) == EXIT_NOT_RUNNING
    assert f"{tmp_path / 'state'} does not exist" in capsys.readouterr().out
    assert main(["check", "--config", str(config)]) == EXIT_CONFIG  # check still says what is wrong


def test_status_with_an_unset_variable_in_the_state_dir_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GW_STATE", raising=False)
    config = tmp_path / "gateway.yaml"
    config.write_text("gateway:\n  id: gw\n  state_dir: ${GW_STATE}\n")
    assert main(["status", "--config", str(config)]) == EXIT_CONFIG
    assert f"{config}:3: gateway.state_dir: '${{GW_STATE}}' is no path" in capsys.readouterr().err


def test_status_with_a_bad_gateway_section_says_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("gateway:\n  id: gw\n  state_dri: /tmp\n")
    assert main(["status", "--config", str(config)]) == EXIT_CONFIG
    assert f"{config}:3: gateway.state_dri: unknown key" in capsys.readouterr().err


async def test_uptime_comes_from_the_monotonic_clock(tmp_path: Path) -> None:
    """A Pi without a real-time clock boots at an old time and NTP steps it forward later:
    the gateway was not up for the size of that step."""
    async with Buffer(tmp_path / "buffer.db", max_bytes=1 << 20) as buffer:
        publisher = Publisher(AmqpSection(), GatewaySection(id="gw"), buffer)
        writer = StatusWriter(tmp_path, buffer, publisher, lambda: [])
        writer.started -= 86_400  # as if the wall clock had been stepped a day since the start
        writer.write()
        shown = format_status(read_status(tmp_path))
    assert "gateway    running, pid" in shown
    assert ", up 0 s" in shown


async def test_a_drivers_last_error_says_how_long_ago_it_was(tmp_path: Path) -> None:
    """An error long past beside a driver that reads again (a broker restarted four minutes
    ago) read as news: it says when it was."""
    stats = DriverStats(type="mqtt")
    stats.failed("cannot connect to 127.0.0.1:1883: [Errno 111] Connection refused")
    assert stats.last_error_at is not None
    stats.last_error_at -= 240
    stats.state = "connected"
    async with Buffer(tmp_path / "buffer.db", max_bytes=1 << 20) as buffer:
        publisher = Publisher(AmqpSection(), GatewaySection(id="gw"), buffer)
        driver = SimpleNamespace(name="sensors", stats=stats)
        StatusWriter(tmp_path, buffer, publisher, lambda: [driver]).write()
        shown = format_status(read_status(tmp_path))
    assert "connected, 0 readings" in shown
    assert "errors 1 (last 4 min ago: cannot connect to 127.0.0.1:1883" in shown


async def test_drops_before_this_start_are_shown_beside_this_runs(tmp_path: Path) -> None:
    async with Buffer(tmp_path / "buffer.db", max_bytes=1 << 20) as buffer:
        publisher = Publisher(AmqpSection(), GatewaySection(id="gw"), buffer)
        buffer.counters.dropped, buffer.counters.dropped_ever = 5, 46  # 41 before a restart
        StatusWriter(tmp_path, buffer, publisher, lambda: []).write()
        shown = format_status(read_status(tmp_path))
    assert "dropped 5 (46 since the buffer was created), commits" in shown
