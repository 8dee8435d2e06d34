"""A stop must fit the unit's TimeoutStopSec=: the gateway warns at start when it may not."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.app import _check_timeouts
from gateway.config import UNIT_STOP_TIMEOUT_S, GatewayConfig

UNIT = Path(__file__).parents[2] / "systemd" / "edge-gateway.service"
WARNING = (
    "amqp.shutdown_grace_s is too long for the unit's stop timeout: "
    "systemd may kill a stop before the last confirms arrive"
)


MINIMAL_DRIVERS: dict[str, dict[str, Any]] = {
    "ble": {"type": "ble"},
    "mqtt": {"type": "mqtt", "subscriptions": [{"topic": "s/+/x", "device": "s/{device}/x"}]},
    "mqtt-tls": {"type": "mqtt", "tls": {}, "subscriptions": [{"topic": "t/#"}]},
    "serial": {"type": "serial", "protocol": "lines", "format": "json", "port": "/dev/ttyUSB0"},
}


def config(grace_s: float, *driver_types: str) -> GatewayConfig:
    drivers = [{**MINIMAL_DRIVERS[kind], "name": f"d{i}"} for i, kind in enumerate(driver_types)]
    return GatewayConfig.model_validate(
        {"gateway": {"id": "gw"}, "amqp": {"shutdown_grace_s": grace_s}, "drivers": drivers},
        context={"check_files": False},
    )


def warnings(config: GatewayConfig, under_systemd: bool = True) -> list[dict[str, Any]]:
    reporter: Any = SimpleNamespace(stall_s=60.0, notifier=SimpleNamespace(enabled=under_systemd))
    with capture_logs() as logs:
        _check_timeouts(config, reporter)
    return [log for log in logs if log["event"] == WARNING]


def test_the_constant_is_the_units_timeout_stop_sec() -> None:
    found = re.search(r"^TimeoutStopSec=(\d+)$", UNIT.read_text(), re.MULTILINE)
    assert found and float(found[1]) == UNIT_STOP_TIMEOUT_S


@pytest.mark.parametrize(
    ("grace_s", "drivers", "fits"),
    [
        (5, ("ble", "mqtt-tls", "serial"), True),  # the defaults fit, whatever the drivers
        (23, ("ble",), True),  # 15 s BLE + 23 s + 2 s to close + 5 s to commit
        (24, ("ble",), False),
        (28, ("mqtt",), True),  # a connect in progress: 10 s + 28 s + 2 s + 5 s
        (29, ("mqtt",), False),
        (18, ("mqtt-tls",), True),  # connect, then the TLS handshake: 20 s + 18 s + 7 s
        (19, ("mqtt-tls",), False),
        (23, ("mqtt", "ble"), True),  # drivers stop together: the longest counts
        (24, ("ble", "mqtt"), False),
        (38, ("serial",), True),  # serial drivers stop at once
        (39, ("serial",), False),
        (38, (), True),
        (300, ("ble",), False),
    ],
)
def test_a_grace_that_may_outlast_the_stop_timeout_is_warned_about(
    grace_s: float, drivers: tuple[str, ...], fits: bool
) -> None:
    found = warnings(config(grace_s, *drivers))
    assert (found == []) is fits
    if not fits:
        limit = grace_s - found[0]["overrun_s"]
        assert found[0]["hint"].startswith(f"lower amqp.shutdown_grace_s to {limit:g} or less")


def test_outside_systemd_no_stop_timeout_applies() -> None:
    assert warnings(config(300, "ble"), under_systemd=False) == []
