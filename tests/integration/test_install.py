"""systemd/install.sh run into a temporary root (--root): the files it lays down, twice, then away.

The virtualenv is real (python3 -m venv, pip install of this checkout), so the
installed `edge-gateway` must run and accept the configuration it was given.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
INSTALLER = REPO / "systemd" / "install.sh"


def install(root: Path, *options: str) -> str:
    result = subprocess.run(
        ["bash", str(INSTALLER), "--root", str(root), *options],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl (package systemd) missing")
def test_install_upgrade_and_uninstall_into_a_temporary_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    said = install(root)
    print(f"\n[install]\n{said}")

    unit = root / "etc/systemd/system/edge-gateway.service"
    assert unit.read_bytes() == (REPO / "systemd/edge-gateway.service").read_bytes()
    wants = root / "etc/systemd/system/multi-user.target.wants/edge-gateway.service"
    assert wants.is_symlink()  # enabled: starts at boot
    rules = root / "etc/udev/rules.d/60-edge-gateway-serial.rules"
    assert rules.read_bytes() == (REPO / "systemd/60-edge-gateway-serial.rules").read_bytes()
    modules = (root / "etc/modules-load.d/edge-gateway.conf").read_text().split()
    assert {"usbserial", "cdc_acm"} <= set(modules)
    config = root / "etc/edge-gateway/gateway.yaml"
    assert config.read_bytes() == (REPO / "config/gateway.example.yaml").read_bytes()
    assert (config.parent.stat().st_mode & 0o777) == 0o750
    for secret in ("amqp-password", "client.key"):  # the unit's LoadCredential= sources
        path = root / "etc/edge-gateway/credentials" / secret
        assert path.exists() and (path.stat().st_mode & 0o777) == 0o600

    program = root / "opt/edge-gateway/bin/edge-gateway"
    checked = subprocess.run(
        [str(program), "check", "--config", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert (root / "opt/edge-gateway/docs/operations.md").exists()  # the unit's Documentation=
    assert (root / "opt/edge-gateway/config/gateway.example.yaml").exists()  # the docs link it
    [site] = (root / "opt/edge-gateway/lib").glob("python3*/site-packages")
    for package in ("gateway", "drivers"):  # the source's modules, none left over in build/
        installed = {p.relative_to(site) for p in (site / package).rglob("*.py")}
        source = {p.relative_to(REPO) for p in (REPO / package).rglob("*.py")}
        assert installed == source

    # The unit as installed, pointing at the installed program, passes systemd's check.
    local_unit = tmp_path / "edge-gateway.service"
    local_unit.write_text(unit.read_text().replace("/opt/edge-gateway", str(program.parents[1])))
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(local_unit)], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr

    # Again, as an upgrade: the operator's configuration is never overwritten.
    config.write_text(config.read_text() + "\n# edited by the operator\n")
    edited = config.read_text()
    said = install(root)
    assert f"kept {config}" in said
    assert config.read_text() == edited

    # A configuration kept elsewhere and symlinked in is the operator's too, even while the
    # link dangles (its volume not mounted yet): `[ -e ]` alone would call it missing.
    elsewhere = tmp_path / "site-volume"
    elsewhere.mkdir()
    (elsewhere / "gateway.yaml").write_text(edited)
    config.unlink()
    config.symlink_to(elsewhere / "gateway.yaml")
    for secret in ("amqp-password", "client.key"):
        link = root / "etc/edge-gateway/credentials" / secret
        link.unlink()
        link.symlink_to(elsewhere / secret)
    unmounted = elsewhere.rename(tmp_path / "unmounted")
    said = install(root)
    assert f"kept {config}" in said
    assert config.is_symlink() and config.readlink() == elsewhere / "gateway.yaml"
    assert (root / "etc/edge-gateway/credentials/client.key").is_symlink()
    unmounted.rename(elsewhere)
    assert config.read_text() == edited

    said = install(root, "--uninstall")
    assert not unit.exists() and not wants.exists() and not rules.exists()
    assert not (root / "opt/edge-gateway").exists()
    assert config.read_text() == edited  # configuration (and the buffer) are kept
    assert "kept" in said
