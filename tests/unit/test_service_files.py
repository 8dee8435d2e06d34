"""The files under systemd/: the unit passes systemd's own checks, the udev rules parse."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).parents[2] / "systemd"
UNIT = SYSTEMD / "edge-gateway.service"
MAX_EXPOSURE = 3.0

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is missing: apt-get install systemd (scripts/bootstrap.sh does)",
)


def local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's edge-gateway, which exists here."""
    bin_dir = str(Path(sys.executable).parent)
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/edge-gateway/bin", bin_dir))
    return copy


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local_unit(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_systemd_analyze
def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(local_unit(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure, verdict = float(found[1]), found[2]
    print(f"\n[systemd-analyze security] exposure {exposure} {verdict}")
    assert exposure <= MAX_EXPOSURE
    assert verdict == "OK"


def test_unit_is_a_notify_service_with_watchdog_reload_and_credentials() -> None:
    settings = unit_settings()
    assert settings["Type"] == ["notify"]
    assert settings["Restart"] == ["on-failure"]
    assert int(settings["WatchdogSec"][0]) > 10  # amqp.timeout_s (10 s by default) must fit
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["StateDirectory"] == ["edge-gateway"]
    assert settings["ConfigurationDirectory"] == ["edge-gateway"]
    assert settings["SupplementaryGroups"] == ["dialout bluetooth"]
    assert {c.split(":")[0] for c in settings["LoadCredential"]} == {"amqp-password", "client.key"}
    families = set(settings["RestrictAddressFamilies"][0].split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_BLUETOOTH", "AF_NETLINK"}


UDEV_KEY = re.compile(
    r'(?P<key>[A-Z_]+)(\{(?P<attr>[A-Za-z0-9_]+)\})?(?P<op>==|!=|\+=|-=|:=|=)"(?P<value>[^"]*)"'
)
UDEV_MATCH_KEYS = {"ACTION", "SUBSYSTEM", "SUBSYSTEMS", "ATTRS", "ENV", "KERNEL"}
UDEV_ASSIGN_KEYS = {"ENV", "GROUP", "MODE", "SYMLINK", "IMPORT", "GOTO", "LABEL"}


def test_udev_rules_parse_key_by_key_and_every_goto_has_its_label() -> None:
    """systemd 252 has no `udevadm verify`: check the syntax the way udev tokenises a line."""
    rules = sorted(SYSTEMD.glob("*.rules"))
    assert [r.name for r in rules] == ["60-edge-gateway-serial.rules"]
    gotos, labels, symlinks = set(), set(), []
    for number, line in enumerate(rules[0].read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        pairs = [p.strip() for p in line.split(", ")]
        for pair in pairs:
            token = UDEV_KEY.fullmatch(pair)
            assert token, f"line {number}: cannot parse {pair!r}"
            key, op = token["key"], token["op"]
            if op in ("==", "!="):
                assert key in UDEV_MATCH_KEYS, f"line {number}: {key} cannot be matched"
            else:
                assert key in UDEV_ASSIGN_KEYS, f"line {number}: {key} cannot be assigned"
            if key == "GOTO":
                gotos.add(token["value"])
            if key == "LABEL":
                labels.add(token["value"])
            if key == "SYMLINK":
                symlinks.append(token["value"])
    assert gotos and gotos <= labels
    assert symlinks and all(s.startswith("edge-gateway/") for s in symlinks)
    text = rules[0].read_text()
    for vendor in ("0403", "1a86", "10c4", "067b"):
        assert f'ATTRS{{idVendor}}=="{vendor}"' in text
    assert 'GROUP="dialout"' in text


MDWE_PROBE = """
import ctypes
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, kernel >= 6.3
    raise SystemExit(77)
import gateway.app, gateway.cli, gateway.metrics, drivers.mqtt.source  # noqa: E401
from gateway.clock import system_clock_synchronized
system_clock_synchronized()
print("ok")
"""


def test_the_gateway_loads_under_memory_deny_write_execute() -> None:
    """The unit sets MemoryDenyWriteExecute=; the kernel's own W^X switch shows it is safe:
    nothing the gateway imports (nor the ctypes call of the clock probe) needs W+X memory."""
    result = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, check=False
    )
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


CLOCK_PROBE = "from gateway.clock import system_clock_synchronized; system_clock_synchronized()"


def test_the_unit_allows_the_syscall_the_clock_probe_makes() -> None:
    """glibc's adjtimex() is the clock_adjtime syscall (clock_adjtime64 on 32-bit ARM): the
    unit's seccomp filter must name what is really called, or the flag never fires."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (scripts/bootstrap.sh installs it)")
    traced = subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-e",
            "trace=adjtimex,clock_adjtime",
            sys.executable,
            "-c",
            CLOCK_PROBE,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    called = set(re.findall(r"^(?:\[pid +\d+\] )?(adjtimex|clock_adjtime)\(", traced.stderr, re.M))
    assert called, traced.stderr
    allowed = {
        name
        for line in UNIT.read_text().splitlines()
        if line.startswith("SystemCallFilter=") and not line.startswith("SystemCallFilter=~")
        for name in line.removeprefix("SystemCallFilter=").split()
    }
    assert called <= allowed, f"the probe calls {called}; the unit allows {allowed}"
