#!/usr/bin/env bash
# Set up neo-auditd on a fresh machine and run the daemon on the example deployment,
# with the embedded store (SQLite) and a generated day of the example company's access
# log. Stop it with Ctrl-C (SIGTERM/SIGINT drain and checkpoint). Meanwhile, in another
# terminal:   .venv/bin/neo-auditd incidents list -c examples/config.yaml
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${NEO_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e .

mkdir -p examples/out/logs
if [ ! -f examples/out/logs/access.log ]; then
    "$VENV/bin/python" examples/generate.py --out examples/out/logs --lines "${NEO_DEMO_LINES:-100000}" --seed 1
fi
[ -f examples/out/pseudonym.key ] || "$VENV/bin/neo-auditd" keygen examples/out/pseudonym.key
"$VENV/bin/neo-auditd" check -c examples/config.yaml
echo "neo-auditd: tailing examples/out/logs/access.log*; metrics on http://127.0.0.1:9464/metrics" >&2
exec "$VENV/bin/neo-auditd" run -c examples/config.yaml
