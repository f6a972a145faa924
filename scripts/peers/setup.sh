#!/usr/bin/env bash
# Installs what scripts/peers/run.py compares Shoal with (run as root, once per machine):
#   - the servers, from Debian packages: redis-server, rabbitmq-server, postgresql;
#     their own system services are kept from starting (policy-rc.d) and stopped/disabled
#     if they did start: run.py starts private instances on 127.0.0.1 in temp dirs.
#   - a separate venv, scripts/peers/.venv (git-ignored), with the peers from PyPI and
#     this project itself (editable), so the peers' dependencies never touch the dev venv.
# Usage: bash scripts/peers/setup.sh [--no-apt] [--python PYTHON]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
PYTHON=python3
APT=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-apt) APT=0 ;;
    --python) PYTHON="$2"; shift ;;
    *) echo "setup.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

PACKAGES="redis-server rabbitmq-server postgresql"
SERVICES="redis-server rabbitmq-server postgresql"

stop_services() {
  # Whatever the packages started (on a machine where policy-rc.d was absent) is stopped
  # and disabled, so the only servers running are run.py's own, on loopback.
  for s in $SERVICES; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl disable --now "$s" >/dev/null 2>&1 || true
    fi
    if command -v service >/dev/null 2>&1; then
      service "$s" stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
      update-rc.d "$s" disable >/dev/null 2>&1 || true
    fi
  done
  # (an epmd left by a packaged node that did start is not killed here: it may not be ours;
  # run.py never uses the default epmd port, it starts its own epmd on loopback)
}

if [ "$APT" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then echo "setup.sh: apt-get needs root (or pass --no-apt)" >&2; exit 1; fi
  POLICY=/usr/sbin/policy-rc.d
  OWN_POLICY=0
  if [ ! -e "$POLICY" ]; then
    # exit 101 = "action forbidden": invoke-rc.d will not start the packages' services
    printf '#!/bin/sh\nexit 101\n' > "$POLICY"; chmod +x "$POLICY"; OWN_POLICY=1
  fi
  trap '[ "$OWN_POLICY" = 1 ] && rm -f "$POLICY"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends $PACKAGES
  stop_services
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q \
  "celery[redis]" rq "dramatiq[redis,rabbitmq]" huey taskito "pgqueuer[psycopg]" "psycopg[binary]" asyncpg \
  redis pika
"$VENV/bin/python" -m pip install -q -e "$ROOT"
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
for name in ("celery", "kombu", "rq", "dramatiq", "huey", "taskito", "pgqueuer", "psycopg", "redis", "pika", "shoal"):
    try:
        print(f"{name} {version(name)}")
    except Exception as exc:  # reported, not fatal: run.py marks the peer as not installed
        print(f"{name} NOT INSTALLED: {exc}")
PY
for bin in redis-server rabbitmq-server epmd; do command -v "$bin" >/dev/null || echo "missing: $bin"; done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || echo "missing: postgresql initdb"
echo "setup.sh: done; run: $VENV/bin/python $HERE/run.py --quick"
