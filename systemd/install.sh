#!/usr/bin/env bash
# Install edge-gateway as a system service on Raspberry Pi OS / Debian (bookworm), from this
# checkout:
#
#   sudo systemd/install.sh                # install or upgrade; safe to run again
#   sudo systemd/install.sh --uninstall    # remove the program, unit and rules; keep config
#                                          # (/etc/edge-gateway) and buffer (/var/lib/edge-gateway)
#   systemd/install.sh --root DIR          # lay the files down under DIR (tests, inspection):
#                                          # no user, no udev or systemd reload, nothing started;
#                                          # not for images (scripts name DIR/opt/...)
#
# What it does, each step only when needed (it says which it did):
#   - the system user and group edge-gateway (and the group bluetooth if missing);
#   - a virtualenv /opt/edge-gateway with this package (python3 -m venv, pip install);
#   - /etc/edge-gateway/gateway.yaml from config/gateway.example.yaml, only if there is none
#     (an existing configuration is never overwritten), and /etc/edge-gateway/credentials/;
#   - the unit /etc/systemd/system/edge-gateway.service (enabled: it starts at boot), the udev
#     rules systemd/*.rules in /etc/udev/rules.d/, /etc/modules-load.d/edge-gateway.conf.
# An upgrade checks the configuration, then restarts a running gateway; a first install
# leaves starting it to you.
set -euo pipefail
umask 022  # the service user must read the program; secrets get their own modes below

SOURCE=$(cd "$(dirname "$0")/.." && pwd)
NAME=edge-gateway
ROOT=
ACTION=install
PYTHON=${PYTHON:-python3}

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
ARGS="$*"  # for the "run as root" hint, before the loop below shifts them away
while [ $# -gt 0 ]; do
    case $1 in
        --uninstall) ACTION=uninstall ;;
        --root) ROOT=${2:?--root needs a directory}; shift ;;
        --root=*) ROOT=${1#--root=} ;;
        -h|--help) usage 0 ;;
        *) printf 'install.sh: unknown option %s\n\n' "$1" >&2; usage 2 >&2 ;;
    esac
    shift
done
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
fi

VENV=$ROOT/opt/$NAME
ETC=$ROOT/etc/$NAME
UNIT=$ROOT/etc/systemd/system/$NAME.service
RULES=$ROOT/etc/udev/rules.d
MODULES=$ROOT/etc/modules-load.d/$NAME.conf
STATE=$ROOT/var/lib/$NAME

say() { printf '%s: %s\n' "$NAME" "$*"; }
die() { printf '%s: error: %s\n' "$NAME" "$*" >&2; exit 1; }
live() { [ -z "$ROOT" ]; }                     # acting on this machine, not on a tree
booted() { live && [ -d /run/systemd/system ]; }

# Copy $1 to $2 with mode $3 unless identical; say so when it changed.
put() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        return 1
    fi
    install -D -m "$3" "$1" "$2"
    say "installed $2"
}

preflight() {
    if live && [ "$(id -u)" -ne 0 ]; then
        die "run as root: sudo $0 $ARGS"
    fi
    if [ "$ACTION" = uninstall ]; then
        return  # removing needs no Python
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "$PYTHON 3.11 or newer is needed (Raspberry Pi OS bookworm has it)"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
        || die "python3-venv is missing: apt-get install python3-venv"
}

make_user() {
    if ! live; then
        say "skipped: system user $NAME (--root)"
        return
    fi
    if ! getent group bluetooth >/dev/null; then
        groupadd --system bluetooth
        say "created group bluetooth (for BlueZ's D-Bus policy)"
    fi
    if ! getent passwd "$NAME" >/dev/null; then
        useradd --system --user-group --home-dir "/var/lib/$NAME" --no-create-home \
            --shell /usr/sbin/nologin --comment "edge-gateway service" "$NAME"
        say "created system user $NAME"
    fi
}

make_venv() {
    local fresh=
    if [ ! -x "$VENV/bin/python" ] \
        || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
    then
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
        fresh=1
    fi
    # From a clean copy: setuptools never prunes a checkout's build/ (modules removed from the
    # source would be installed again from there), and root would own what it leaves there.
    local tree
    tree=$(mktemp -d)
    tar -C "$SOURCE" --exclude=./build --exclude=./.venv --exclude=./.git \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$tree" -xf -
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$tree"
    rm -rf "$tree"
    mkdir -p "$VENV/docs" "$VENV/config"
    cp "$SOURCE"/docs/*.md "$VENV/docs/"
    cp "$SOURCE/README.md" "$VENV/"
    cp "$SOURCE/config/gateway.example.yaml" "$VENV/config/"  # the docs link ../config/
    say "${fresh:+created $VENV and }installed $("$VENV/bin/edge-gateway" --version) into $VENV"
}

make_config() {
    install -d -m 0750 "$ETC"
    install -d -m 0700 "$ETC/credentials"
    if live; then
        chgrp "$NAME" "$ETC"
    fi
    # -L too: a symlink (to a file kept elsewhere, perhaps not mounted yet) is the operator's.
    if [ -e "$ETC/gateway.yaml" ] || [ -L "$ETC/gateway.yaml" ]; then
        say "kept $ETC/gateway.yaml (never overwritten)"
    else
        install -m 0640 "$SOURCE/config/gateway.example.yaml" "$ETC/gateway.yaml"
        live && chgrp "$NAME" "$ETC/gateway.yaml"
        say "created $ETC/gateway.yaml from the example: edit it"
        FIRST_CONFIG=1
    fi
    # The unit loads these as credentials; systemd refuses to start if a file is missing.
    local secret
    for secret in amqp-password client.key; do
        if [ ! -e "$ETC/credentials/$secret" ] && [ ! -L "$ETC/credentials/$secret" ]; then
            install -m 0600 /dev/null "$ETC/credentials/$secret"
            say "created empty $ETC/credentials/$secret (fill it in if the configuration uses it)"
        fi
    done
}

install_unit() {
    local changed= rule
    put "$SOURCE/systemd/$NAME.service" "$UNIT" 0644 && changed=1
    for rule in "$SOURCE"/systemd/*.rules; do
        [ -e "$rule" ] || continue
        put "$rule" "$RULES/$(basename "$rule")" 0644 && RULES_CHANGED=1
    done
    local modules
    modules=$(mktemp)
    printf '# %s: USB serial drivers loaded at boot, for DeviceAllow= in the unit\n%s\n%s\n' \
        "$NAME" usbserial cdc_acm > "$modules"
    put "$modules" "$MODULES" 0644 || true
    rm -f "$modules"
    if booted; then
        modprobe -q usbserial 2>/dev/null || true
        modprobe -q cdc_acm 2>/dev/null || true
        if [ -n "${RULES_CHANGED:-}" ]; then
            udevadm control --reload
            udevadm trigger --subsystem-match=tty --action=add
            say "reloaded the udev rules (USB serial adapters appear under /dev/$NAME/)"
        fi
        systemctl daemon-reload
        systemctl enable --quiet "$NAME.service"
    else
        systemctl --root="${ROOT:-/}" enable --quiet "$NAME.service" 2>/dev/null \
            || die "systemctl --root=${ROOT:-/} enable failed"
    fi
    say "enabled $NAME.service: it starts at boot${changed:+ (unit file updated)}"
}

next_step() {
    if ! booted; then
        say "done; files are under ${ROOT:-/} (systemd is not running here: nothing started)"
    elif [ -n "${FIRST_CONFIG:-}" ]; then
        say "next: edit $ETC/gateway.yaml, check it with"
        say "    sudo CREDENTIALS_DIRECTORY=$ETC/credentials $VENV/bin/edge-gateway check \\"
        say "        --config $ETC/gateway.yaml"
        say "then start it:  sudo systemctl start $NAME && journalctl -u $NAME -f"
    elif systemctl is-active --quiet "$NAME.service"; then
        # The new version may check more strictly: a configuration it refuses must not stop
        # a gateway that runs (exit 2 is not restarted by systemd). It is checked with the
        # unit's Environment= (for ${VAR} in the file), as systemd lists it: space-separated.
        local unit_env
        unit_env=$(systemctl show -p Environment --value "$NAME.service" 2>/dev/null || true)
        # shellcheck disable=SC2086  # word splitting wanted: one NAME=value per word
        if ! env $unit_env CREDENTIALS_DIRECTORY="$ETC/credentials" "$VENV/bin/edge-gateway" \
            check --config "$ETC/gateway.yaml" >/dev/null; then
            say "NOT restarted: the new version refuses $ETC/gateway.yaml (above); the running"
            say "gateway goes on with the old one. Fix the file, check it, then restart:"
            say "    sudo CREDENTIALS_DIRECTORY=$ETC/credentials $VENV/bin/edge-gateway check \\"
            say "        --config $ETC/gateway.yaml && sudo systemctl restart $NAME"
            return
        fi
        systemctl restart "$NAME.service"
        say "restarted $NAME.service with the new version; see: systemctl status $NAME"
    else
        say "next: sudo systemctl start $NAME && journalctl -u $NAME -f"
    fi
}

uninstall() {
    if booted; then
        systemctl disable --now --quiet "$NAME.service" 2>/dev/null || true
    elif [ -e "$UNIT" ]; then
        systemctl --root="${ROOT:-/}" disable --quiet "$NAME.service" 2>/dev/null || true
    fi
    local path
    for path in "$UNIT" "$MODULES" "$RULES"/60-edge-gateway-*.rules; do
        if [ -e "$path" ]; then
            rm -f "$path"
            say "removed $path"
        fi
    done
    if [ -d "$VENV" ]; then
        rm -rf "$VENV"
        say "removed $VENV"
    fi
    if booted; then
        systemctl daemon-reload
        udevadm control --reload
    fi
    say "kept $ETC (configuration), $STATE (the buffer: readings not yet published) and the"
    say "user $NAME; remove them yourself when they are no longer needed:"
    say "    sudo rm -r $ETC $STATE && sudo userdel $NAME"
}

preflight
if [ "$ACTION" = uninstall ]; then
    uninstall
    exit 0
fi
make_user
make_venv
make_config
install_unit
next_step
