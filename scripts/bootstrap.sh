#!/usr/bin/env bash
# Prepare this checkout for development and tests, on Debian 12 or Raspberry Pi OS (bookworm).
#
#   scripts/bootstrap.sh            # as root, or as a user with non-interactive sudo
#
# - apt-installs the system packages the tests need, only those missing (apt-get update once,
#   and only then). The install does not start the packages' system services: the tests run
#   private brokers on free loopback ports. Services that were already there are left alone.
# - creates .venv (python3 -m venv) and installs the project into it with its test extras,
#   again only when pyproject.toml changed since the last successful install.
#
# Idempotent and non-interactive; progress goes to stderr. PYTHON=python3.12 picks another
# interpreter for a new .venv.
set -euo pipefail

cd "$(dirname "$0")/.."

PACKAGES=(rabbitmq-server mosquitto python3-venv python3-pip dbus-daemon strace systemd)
SERVICES=(rabbitmq-server mosquitto)
VENV=.venv
STAMP=$VENV/.bootstrap-stamp
PYTHON=${PYTHON:-python3}

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"  # -n: fail instead of asking for a password
    else
        die "must run as root (or with sudo) to run: $*"
    fi
}

install_packages() {
    command -v dpkg-query >/dev/null 2>&1 || die "not a Debian system (no dpkg-query)"
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        installed "$pkg" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0

    say "installing ${missing[*]}"
    # A policy-rc.d that says "no" keeps the installation from starting the new services
    # (invoke-rc.d and deb-systemd-invoke honour it). Containers often ship one already.
    local policy=/usr/sbin/policy-rc.d our_policy=
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        our_policy=1
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
    as_root "${apt[@]}" update >/dev/null
    as_root "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$our_policy" ]; then
        as_root rm -f "$policy"
        trap - EXIT
    fi

    # Services that this run installed (not ones the machine had) stay off at boot too.
    if [ -d /run/systemd/system ]; then
        local service
        for service in "${SERVICES[@]}"; do
            if [[ " ${missing[*]} " == *" $service "* ]]; then
                as_root systemctl disable --quiet "$service" 2>/dev/null || true
            fi
        done
    fi
}

make_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || die "$PYTHON is older than 3.11 (set PYTHON=python3.11 or newer)"
        say "creating $VENV with $("$PYTHON" --version 2>&1)"
        "$PYTHON" -m venv "$VENV"
        rm -f "$STAMP"
    fi
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
        say "installing the project and its test dependencies into $VENV"
        "$VENV/bin/python" -m pip install -qq --disable-pip-version-check -e '.[test]'
        printf '%s\n' "$want" > "$STAMP"
    fi
}

install_packages
make_venv
