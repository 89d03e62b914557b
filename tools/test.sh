#!/usr/bin/env bash
# Run the whole test suite on a fresh machine, installing what it needs:
# the Debian packages the tests drive (as root, with apt-get), then the
# project and its test dependencies into a virtual environment (.venv).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS="iproute2 nftables conntrack nfdump tshark libfixbuf-tools softflowd rsyslog procps iputils-ping systemd logrotate tcpdump libpcap0.8 libconfig-general-perl clickhouse-server pmacct"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing Debian packages:$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "not root: cannot install$missing; the tests that need them will be skipped" >&2
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]'

exec .venv/bin/python -m pytest -rs "$@"
