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

# Letters are PDFs through WeasyPrint, which needs Pango (and HarfBuzz's subsetter, so a
# letter embeds the glyphs it uses, not a whole CJK font), and a CJK font for Chinese
# text; pdftotext (poppler-utils) reads the letters back in the tests; openssl makes the
# test SMTP server's certificate. All Debian packages. Without root they cannot be
# installed here: the tests that need them then skip and say which package is missing
# (in CI, where CI is set, they fail instead).
debs=""
ldconfig -p | grep -q "libpango-1.0.so.0" || debs="$debs libpango-1.0-0"
ldconfig -p | grep -q "libpangoft2-1.0.so.0" || debs="$debs libpangoft2-1.0-0"
ldconfig -p | grep -q "libharfbuzz-subset.so.0" || debs="$debs libharfbuzz-subset0"
command -v pdftotext >/dev/null 2>&1 || debs="$debs poppler-utils"
[ -f /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || debs="$debs fonts-wqy-zenhei"
command -v openssl >/dev/null 2>&1 || debs="$debs openssl"
if [ -n "$debs" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $debs >/dev/null
    else
        echo "warning: cannot install$debs (needs root and apt-get); the tests that need them will skip" >&2
    fi
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
