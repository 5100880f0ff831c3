"""End to end on the example deployment: a generated log replayed with the shipped rules
finds every planted scenario those rules cover and raises nothing on entitled work, as
examples/score.py reads it from the CLI's JSON; and examples/demo.sh, run as a user
would, ends with that table."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from auditd.enrich.pseudonym import create_key_file

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
LINES = 20_000
PER_EVENT_RULES_FIND = {  # scenario -> tiers its incident may have (DESIGN.md's table)
    "departed_access": {"T5"}, "category_not_granted": {"T5"}, "out_of_scope": {"T5"},
    "missing_purpose": {"T5"}, "unmask_without_grant": {"T5"}, "share_beyond_allowance": {"T5"},
    "export_outside_mainland": {"T4"}, "bulk_export": {"T4"}, "off_shift": {"T6"},
    "dpo_outside_request": {"T5", "T6"},
}


def neo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditd.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scoring")
    subprocess.run([sys.executable, str(EXAMPLES / "generate.py"), "--out", str(tmp / "logs"), "--lines",
                    str(LINES), "--seed", "3"], check=True, capture_output=True)
    create_key_file(tmp / "pseudonym.key")
    config = tmp / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n  - {name: crm, paths: [logs/access.log], format: neo-crm}\n"
        "pseudonym: {key_file: pseudonym.key}\n"
        f"directory: {{path: {EXAMPLES / 'directory.yaml'}}}\n"
        f"rules: {{paths: [{EXAMPLES / 'rules.d'}]}}\n"
        "ops: {metrics: {enabled: false}}\n", encoding="utf-8")
    replayed = neo("replay", "-c", str(config), "--json", str(tmp / "logs" / "access.log"))
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    assert json.loads(replayed.stdout)["events"] == LINES
    proc = subprocess.run([sys.executable, str(EXAMPLES / "score.py"), "-c", str(config), "--truth",
                           str(tmp / "logs" / "ground_truth.jsonl"), "--json"],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, NEO_AUDITD=str(Path(sys.executable).parent / "neo-auditd")))
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout), proc.returncode


def test_every_scenario_the_shipped_rules_cover_is_found(scored):
    report, _ = scored
    rows = report["scenarios"]
    assert {r["scenario"] for r in rows} >= set(PER_EVENT_RULES_FIND)
    for r in rows:
        assert r["result"] == "found", r  # the behaviour scenarios too (rules/behaviour.yaml)
        if not r["needs"]:
            assert set(r["tiers"]) <= PER_EVENT_RULES_FIND[r["scenario"]], r


def test_entitled_work_raises_nothing(scored):
    report, status = scored
    assert report["unexplained_alerts"] == 0, report["unexplained_examples"]
    assert status == 0


def test_the_demo_ends_with_the_scoring_table(tmp_path):
    """demo.sh as a user runs it (on a copy of examples/, so the checkout's own
    examples/out is left alone), stopping after the table (NEO_DEMO_EXIT=1)."""
    shutil.copytree(EXAMPLES, tmp_path / "examples", ignore=shutil.ignore_patterns("out", "__pycache__"))
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    env = dict(os.environ, NEO_VENV=str(Path(sys.executable).parent.parent), NEO_DEMO_INSTALL="0",
               NEO_DEMO_EXIT="1", NEO_DEMO_LINES="20000", NEO_DEMO_TIMEOUT="600")
    proc = subprocess.run(["bash", str(tmp_path / "examples" / "demo.sh")], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "SCENARIO" in out and "alerts that match no planted scenario: 0" in out
    table = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in
             PER_EVENT_RULES_FIND}
    assert set(table) == set(PER_EVENT_RULES_FIND) and all(" found " in line for line in table.values())
    assert ", 0 missed, 0 not yet covered (of" in out  # the behaviour scenarios are found too
    assert "rendered reports and notices: examples/out/state/respond/" in out
    assert list((tmp_path / "examples" / "out" / "state" / "respond" / "reports").glob("INC-*/initial-r1.json"))
    # the deliver process sent the security team's chat and e-mail to the demo's receivers
    received = tmp_path / "examples" / "out" / "received"
    mails = [email.message_from_bytes(m.read_bytes(), policy=email.policy.default)
             for m in sorted((received / "mail").glob("*.eml"))]
    chats = [json.loads(c.read_text(encoding="utf-8")) for c in sorted((received / "http").glob("*.json"))]
    sent = re.search(r"sent to the demo's receivers: (\d+) e-mail\(s\) .*?, (\d+) chat/SMS/push", out)
    assert sent and (int(sent[1]), int(sent[2])) == (len(mails), len(chats)) and mails and chats, out[-2000:]
    assert {m["To"] for m in mails} == {"security@neo-retail.example"}
    mails = [m["Subject"] + "\n" + m.get_body(preferencelist=("plain",)).get_content() for m in mails]
    assert {c["path"] for c in chats} == {"/security"} and all(c["headers"].get("X-Neo-Idempotency-Key") for c in chats)
    customer_ids = re.compile(r"C\d{8}")  # the example's customers: pseudonyms only for the security team
    assert not [m for m in mails if customer_ids.search(m)] and not customer_ids.search(json.dumps(chats))
    log = (tmp_path / "examples" / "out" / "neo-auditd.log").read_text(encoding="utf-8")
    assert '"message":"stopped"' in log  # the daemon drained and stopped after the table
