#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh machine: a virtualenv with the project
# and its test dependencies, the system tools the tests use, and a real Elasticsearch
# server on 127.0.0.1 for the Elasticsearch tests (started when the first of them runs,
# stopped again at the end). Extra arguments go to pytest, e.g.
#     scripts/test.sh -m "not elasticsearch and not slow"      # the fast part, no Java
# NEO_VENV: the virtualenv (default .venv); NEO_ES_PORT: the server's port (9250).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${NEO_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'

# systemd-analyze checks the unit file; Debian's systemd package ships it.
if ! command -v systemd-analyze >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi

# Elasticsearch is started by the tests' session fixture (tests/elastic_server.py), on
# 127.0.0.1:${NEO_ES_PORT:-9250} through scripts/elasticsearch.sh, only when a selected
# test needs it, and stopped at the end: `-m "not elasticsearch"` never starts it.
# NEO_ES_URL=URL uses a running server instead; NEO_ES_SKIP=1 skips those tests with
# the reason (and fails them under CI=true, where real-server tests never skip).
set +e
"$VENV/bin/python" -m pytest "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
    echo "error: pytest collected no tests" >&2
fi
exit "$status"
