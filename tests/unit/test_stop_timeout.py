"""A stop must fit the unit's TimeoutStopSec=: the gateway warns at start when it may not."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import UNIT_STOP_TIMEOUT_S, UNIT_WATCHDOG_S, GatewayConfig

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
    found = config.service_warnings(60.0, under_systemd)
    return [fields for message, fields in found if message == WARNING]


@pytest.mark.parametrize(
    ("key", "value"), [("TimeoutStopSec", UNIT_STOP_TIMEOUT_S), ("WatchdogSec", UNIT_WATCHDOG_S)]
)
def test_the_constants_are_the_units_settings(key: str, value: float) -> None:
    found = re.search(rf"^{key}=(\d+)$", UNIT.read_text(), re.MULTILINE)
    assert found and float(found[1]) == value


def test_check_says_what_run_would_warn_about_under_the_unit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("gateway: {id: gw}\namqp: {shutdown_grace_s: 60, timeout_s: 60}\n")
    assert main(["check", "--config", str(path)]) == 0  # warnings, not errors
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: amqp.timeout_s is not below the watchdog period: a slow confirm may cause a "
        "restart; lower amqp.timeout_s or raise WatchdogSec= in the unit",
        f"warning: {WARNING}; lower amqp.shutdown_grace_s to 38 or less, or raise "
        "TimeoutStopSec= with `systemctl edit edge-gateway`",
    ]


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
