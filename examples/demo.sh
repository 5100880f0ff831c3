#!/usr/bin/env bash
# Set up neo-auditd on a fresh machine and run the daemon on the example deployment,
# with the embedded store (SQLite) and a generated week of the example company's access
# log. Once the daemon has caught up with the log, it prints, per planted scenario,
# whether the alerts found it, and how many alerts match no planted scenario
# (examples/score.py against examples/out/logs/ground_truth.jsonl), runs the playbooks'
# due steps, says where the rendered reports and notices are and what was sent: the
# deliver stage sends to the demo's receivers on loopback (examples/receivers.py: a mail
# relay and an HTTP gateway that keep what arrives in examples/out/received/); then the
# daemon keeps running in the foreground until Ctrl-C (it drains and checkpoints).
# Meanwhile, in another terminal:   .venv/bin/neo-auditd incidents list -c examples/config.yaml
#
#   NEO_DEMO_LINES=100000   lines to generate (a new number needs: rm -r examples/out)
#   NEO_DEMO_EXIT=1         stop the daemon after the table, and exit with score.py's status
#   NEO_DEMO_TIMEOUT=900    seconds to wait for the daemon to catch up
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${NEO_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# NEO_DEMO_INSTALL=0 keeps the venv's neo-auditd as it is (a test runs a copy of examples/)
[ "${NEO_DEMO_INSTALL:-1}" = 0 ] || "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[demo]'
NEO="$VENV/bin/neo-auditd"
OUT=examples/out
LOG=$OUT/logs/access.log

mkdir -p "$OUT/logs"
if [ ! -f "$LOG" ] || [ ! -f "$OUT/logs/ground_truth.jsonl" ]; then
    rm -rf "$OUT/state"  # a store of another log would score alerts this log never planted
    "$VENV/bin/python" examples/generate.py --out "$OUT/logs" --lines "${NEO_DEMO_LINES:-100000}" --seed 1
fi
# neo-crm's export module writes whom each large export carried (respond.export_manifests)
[ -f "$OUT/logs/exports.jsonl" ] || "$VENV/bin/python" examples/exports.py --log "$LOG" --out "$OUT/logs/exports.jsonl"
[ -f "$OUT/pseudonym.key" ] || "$NEO" keygen "$OUT/pseudonym.key"
"$NEO" check -c examples/config.yaml

# The example names no delivery channels (a deployment names its own relay and robots):
# the demo adds its receivers on loopback to a copy of the config, examples/out/demo.yaml.
RECEIVED=$OUT/received
rm -f "$OUT/receivers.json"
"$VENV/bin/python" examples/receivers.py --out "$RECEIVED" --ports "$OUT/receivers.json" &
receivers=$!
daemon=""
stop() {
    trap - INT TERM EXIT
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill -TERM "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    kill -TERM "$receivers" 2>/dev/null || true
    wait "$receivers" 2>/dev/null || true
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT
for _ in $(seq 50); do [ -s "$OUT/receivers.json" ] && break; sleep 0.2; done
[ -s "$OUT/receivers.json" ] || { echo "the demo's receivers did not start" >&2; exit 1; }
"$VENV/bin/python" examples/demo_config.py --ports "$OUT/receivers.json" --received "$RECEIVED" --out "$OUT/demo.yaml"
echo "demo receivers on 127.0.0.1 (mail and HTTP, $(cat "$OUT/receivers.json")): what is sent lands in $RECEIVED/" >&2

echo "neo-auditd: tailing $LOG*; logs in $OUT/neo-auditd.log; metrics on http://127.0.0.1:9464/metrics" >&2
"$NEO" run -c "$OUT/demo.yaml" >>"$OUT/neo-auditd.log" 2>&1 &
daemon=$!
# caught up: every line of the log is an event, a quarantined line or a skipped one
lines=$(wc -l <"$LOG")
deadline=$((SECONDS + ${NEO_DEMO_TIMEOUT:-900}))
while :; do
    if ! kill -0 "$daemon" 2>/dev/null; then
        echo "neo-auditd stopped; see $OUT/neo-auditd.log" >&2
        tail -n 20 "$OUT/neo-auditd.log" >&2
        exit 1
    fi
    done_lines=$("$NEO" status -c examples/config.yaml --json 2>/dev/null | "$VENV/bin/python" -c '
import json, sys
try:
    status = json.load(sys.stdin)
except ValueError:
    print(0)
else:
    print(sum(s["events"] + s["quarantined"] + s["skipped"] for s in status["sources"]))' || true)
    [ "${done_lines:-0}" -ge "$lines" ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "neo-auditd has read $done_lines of $lines lines after ${NEO_DEMO_TIMEOUT:-900} s; giving up" >&2
        exit 1
    fi
    sleep 2
done
echo "neo-auditd has read all $lines lines; planted scenarios and what the alerts made of them:"
echo
set +e
NEO_AUDITD="$NEO" "$VENV/bin/python" examples/score.py -c examples/config.yaml --truth "$OUT/logs/ground_truth.jsonl"
scored=$?
set -e
echo
# the playbooks' first steps, now rather than at the respond-due job's next run
"$NEO" playbook run-due -c examples/config.yaml
"$NEO" register -c examples/config.yaml | head -n 40 || true  # head may close the pipe first (pipefail)
echo "rendered reports and notices: $OUT/state/respond/"
echo "  regulator reports:  $OUT/state/respond/reports/INCIDENT/initial-r1.{zh-CN,en}.{md,html} and .json"
echo "  notices:            $OUT/state/respond/notices/INCIDENT/STEP/*.json (customers' after the DPO's approval:"
echo "                      $NEO playbook done|approve -c examples/config.yaml INCIDENT STEP)"
echo "  the breach register: $NEO register -c examples/config.yaml [--json]"
# what the deliver process sent (it sends what is due every 5 s): wait until nothing is pending
for _ in $(seq 60); do
    pending=$("$NEO" outbox list -c examples/config.yaml --json 2>/dev/null | "$VENV/bin/python" -c '
import json, sys
print(sum(r["state"] in ("pending", "sending") for r in json.load(sys.stdin)))' || echo 1)
    [ "$pending" = 0 ] && break
    sleep 1
done
"$NEO" outbox list -c examples/config.yaml --json | "$VENV/bin/python" -c '
import collections, json, sys
rows = json.load(sys.stdin)
states = collections.Counter(r["state"] for r in rows)
print("outbox:", ", ".join(f"{n} {state}" for state, n in sorted(states.items())),
      "(held: the T6 anomalies, for the next daily digest)" if states["held"] else "")'
echo "  every message, its route, tries and receipt: $NEO outbox list -c examples/config.yaml"
echo "sent to the demo's receivers: $(find "$RECEIVED/mail" -name '*.eml' 2>/dev/null | wc -l) e-mail(s) in $RECEIVED/mail/," \
     "$(find "$RECEIVED/http" -name '*.json' 2>/dev/null | wc -l) chat/SMS/push request(s) in $RECEIVED/http/"
echo
if [ "${NEO_DEMO_EXIT:-0}" = 1 ]; then
    stop
    exit "$scored"
fi
echo "neo-auditd keeps running (Ctrl-C stops it); try: $NEO incidents list -c examples/config.yaml"
wait "$daemon"
