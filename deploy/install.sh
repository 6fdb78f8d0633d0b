#!/usr/bin/env bash
# Install, upgrade or remove massgate on a Debian or Raspberry Pi OS (64-bit) gateway.
#
#   sudo deploy/install.sh                 install or upgrade from this checkout
#   sudo deploy/install.sh --uninstall     remove the program; keep config, state and totals
#   sudo deploy/install.sh --uninstall --purge    remove those too
#
# It is idempotent: run it again after `git pull` to upgrade. An upgrade replaces the program
# and the unit file, and keeps /etc/massgate (your configuration) and /var/lib/massgate (the
# outbox and the running totals). See deploy/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: install.sh [--root DIR] [--source PATH] [--uninstall [--purge]] [--help]

Install massgate: a virtual environment in /opt/massgate, the massgate user (in the dialout
group, for RS-485 adapters), /etc/massgate/massgate.yaml (mode 0640, from config.example.yaml
when there is none yet), /var/lib/massgate, and the systemd unit, enabled.

  --source PATH   what to install: a source checkout, a wheel, or a pip requirement
                  (default: the checkout this script is in)
  --root DIR      install into DIR instead of / (for images and for the tests)
  --uninstall     stop and remove the program and the unit; keep config, state and the user
  --purge         with --uninstall: also remove /etc/massgate, /var/lib/massgate,
                  /var/cache/massgate and the massgate user
  --help          this text

Environment:
  PYTHON              the Python 3.11+ that makes the virtual environment (default python3)
  MASSGATE_PIP_ARGS   extra pip arguments, e.g. for a gateway without Internet access:
                      MASSGATE_PIP_ARGS="--no-index --find-links /media/usb/wheels"
EOF
}

ROOT=""
SOURCE=""
ACTION=install
PURGE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --root=*) ROOT="${1#--root=}"; shift ;;
        --source) SOURCE="${2:?--source needs a path}"; shift 2 ;;
        --source=*) SOURCE="${1#--source=}"; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
ROOT="${ROOT%/}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
SOURCE="${SOURCE:-$HERE}"
PYTHON="${PYTHON:-python3}"

PREFIX=/opt/massgate
CONF_DIR=/etc/massgate
STATE_DIR=/var/lib/massgate
CACHE_DIR=/var/cache/massgate
UNIT=/etc/systemd/system/massgate.service
USER_NAME=massgate

say() { echo "massgate install: $*"; }
die() { echo "massgate install: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (sudo $0 $*): it creates a user and writes to /etc and /opt"
[ "$PURGE" = 0 ] || [ "$ACTION" = uninstall ] || die "--purge goes with --uninstall"

# systemctl acts on the running system only when installing into it.
systemctl_() {
    if [ -n "$ROOT" ]; then
        systemctl --root="$ROOT" "$@"
    elif [ -d /run/systemd/system ]; then
        systemctl "$@"
    else
        say "systemd is not running here: skipped 'systemctl $*'"
    fi
}

id_of() {  # id_of passwd|group NAME: the numeric id inside ROOT, or nothing
    awk -F: -v n="$2" '$1 == n { print $3 }' "$ROOT/etc/$1" 2>/dev/null || true
}

rootopt=()
[ -z "$ROOT" ] || rootopt=(--root "$ROOT")

if [ "$ACTION" = uninstall ]; then
    if [ -e "$ROOT$UNIT" ]; then
        systemctl_ disable --now massgate.service >/dev/null 2>&1 || systemctl_ disable massgate.service || true
        rm -f "$ROOT$UNIT"
        [ -n "$ROOT" ] || systemctl_ daemon-reload
    fi
    rm -rf "$ROOT$PREFIX"
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ROOT$CONF_DIR" "$ROOT$STATE_DIR" "$ROOT$CACHE_DIR"
        if [ -n "$(id_of passwd "$USER_NAME")" ]; then userdel "${rootopt[@]}" "$USER_NAME"; fi
        if [ -n "$(id_of group "$USER_NAME")" ]; then groupdel "${rootopt[@]}" "$USER_NAME"; fi
        say "removed massgate, its configuration, its state and totals, and its user"
    else
        say "removed massgate; kept $CONF_DIR, $STATE_DIR (outbox and totals) and the $USER_NAME user"
        say "(--uninstall --purge removes them too)"
    fi
    exit 0
fi

# 32-bit ARM has no numba or llvmlite wheels on PyPI or piwheels, and building LLVM on a Pi
# takes hours: there the totalizer runs on its Python engine (the same kilograms, more CPU),
# and pip leaves numba out (pyproject.toml's markers).
ENGINE=numba
case "$(uname -m)" in
    armv6l|armv7l|armhf|i386|i686)
        ENGINE=python
        say "this is a 32-bit system ($(uname -m)): numba has no wheels here, so the totalizer runs on its Python engine (the same kilograms, more CPU; a 64-bit OS gets numba)" ;;
esac
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "$PYTHON is missing or older than 3.11 (Debian 12 and Raspberry Pi OS bookworm have 3.11: apt-get install python3 python3-venv)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$PYTHON cannot make virtual environments: apt-get install python3-venv"

# The user and its groups. dialout owns the serial ports on Debian.
if [ -z "$(id_of group dialout)" ]; then groupadd --system "${rootopt[@]}" dialout; fi
if [ -z "$(id_of group "$USER_NAME")" ]; then
    groupadd --system "${rootopt[@]}" "$USER_NAME"
    say "created group $USER_NAME"
fi
if [ -z "$(id_of passwd "$USER_NAME")" ]; then
    useradd --system "${rootopt[@]}" --gid "$USER_NAME" --groups dialout \
        --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
        --comment "massgate edge gateway" "$USER_NAME"
    say "created user $USER_NAME (groups: $USER_NAME, dialout)"
else
    usermod "${rootopt[@]}" --append --groups dialout "$USER_NAME"
fi
uid="$(id_of passwd "$USER_NAME")"
gid="$(id_of group "$USER_NAME")"

# The program: a virtual environment of its own, replaced in place on upgrade.
if [ ! -x "$ROOT$PREFIX/bin/python" ]; then
    "$PYTHON" -m venv "$ROOT$PREFIX"
    say "created the virtual environment $PREFIX"
fi
# shellcheck disable=SC2086  # MASSGATE_PIP_ARGS is a list of arguments
"$ROOT$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check \
    ${MASSGATE_PIP_ARGS:-} --upgrade "$SOURCE"
install -d -m 0755 "$ROOT$PREFIX/share/examples"
for doc in README.md config.example.yaml; do
    [ ! -f "$HERE/$doc" ] || install -m 0644 "$HERE/$doc" "$ROOT$PREFIX/share/$doc"
done
for example in README.md 99-massgate-rs485.rules mosquitto-tls.conf make-certs.sh; do
    [ ! -f "$HERE/deploy/$example" ] || install -m 0644 "$HERE/deploy/$example" "$ROOT$PREFIX/share/examples/$example"
done
version="$("$ROOT$PREFIX/bin/python" -c 'from importlib.metadata import version; print(version("massgate"))')"
say "installed massgate $version in $PREFIX"

# Configuration: root writes it, the massgate group reads it, nobody else.
install -d -m 0750 -o 0 -g "$gid" "$ROOT$CONF_DIR"
if [ ! -e "$ROOT$CONF_DIR/massgate.yaml" ]; then
    install -m 0640 -o 0 -g "$gid" "$HERE/config.example.yaml" "$ROOT$CONF_DIR/massgate.yaml"
    if [ "$ENGINE" = python ]; then
        printf '\n## Written by install.sh on a 32-bit system, where numba has no wheels.\ntotals:\n  engine: python\n' \
            >>"$ROOT$CONF_DIR/massgate.yaml"
    fi
    say "wrote $CONF_DIR/massgate.yaml from the example: edit it, then 'systemctl start massgate'"
else
    chown "0:$gid" "$ROOT$CONF_DIR/massgate.yaml"
    chmod 0640 "$ROOT$CONF_DIR/massgate.yaml"
    say "kept $CONF_DIR/massgate.yaml"
fi

# State (outbox, totals) and the numba cache belong to the service user; systemd's
# StateDirectory= and CacheDirectory= would make them too, but an upgrade must find them.
install -d -m 0750 -o "$uid" -g "$gid" "$ROOT$STATE_DIR" "$ROOT$CACHE_DIR" "$ROOT$CACHE_DIR/numba"

# The unit, replaced on upgrade; local changes belong in a drop-in (systemctl edit massgate).
install -d -m 0755 "$ROOT/etc/systemd/system"
install -m 0644 "$HERE/systemd/massgate.service" "$ROOT$UNIT"
[ -n "$ROOT" ] || systemctl_ daemon-reload

# Compile the numba kernels into the service's cache now, as the service user: its first
# start then loads them (a cold compile takes tens of seconds on a Raspberry Pi).
if [ -z "$ROOT" ] && [ "$ENGINE" = numba ] && command -v runuser >/dev/null 2>&1; then
    if seconds="$(runuser -u "$USER_NAME" -- env NUMBA_CACHE_DIR="$CACHE_DIR/numba" \
        "$PREFIX/bin/python" -c 'from massgate.agent.bench.totalizer import warm_cache; print(f"{warm_cache():.1f}")')"; then
        say "compiled the totalizer's kernels into $CACHE_DIR/numba ($seconds s)"
    else
        say "warning: could not compile the kernels ahead; the first start will"
    fi
fi

systemctl_ enable massgate.service >/dev/null 2>&1 || systemctl_ enable massgate.service
say "massgate.service is enabled"
if [ -z "$ROOT" ] && [ -d /run/systemd/system ] && systemctl is-active --quiet massgate.service; then
    systemctl restart massgate.service
    say "restarted the running service on the new version"
fi
