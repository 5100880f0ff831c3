"""End to end on the example deployment: a generated log (examples/generate.py, whatever
version), the example's contact CSV and export manifest, a replay, the playbooks' due
steps; the planted bulk export becomes a T4 incident with a police step, a regulator
report with every item, one notice per resolved customer in their language, none to the
insider, and the unresolved counted."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from auditd.config.located import Problems
from auditd.enrich.pseudonym import Pseudonymiser, create_key_file, load_key
from auditd.respond.contacts import normalise_address
from auditd.respond.reports import ITEMS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _cli(*args: str) -> dict | list:
    """The command as a person runs it."""
    proc = subprocess.run([sys.executable, "-m", "auditd.cli", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout) if proc.stdout.lstrip().startswith(("{", "[")) else {}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("example")
    logs = tmp / "logs"
    subprocess.run([sys.executable, str(EXAMPLES / "generate.py"), "--out", str(logs), "--lines", "30000",
                    "--seed", "1"], check=True, capture_output=True)
    subprocess.run([sys.executable, str(EXAMPLES / "exports.py"), "--log", str(logs / "access.log"),
                    "--out", str(logs / "exports.jsonl")], check=True, capture_output=True)
    create_key_file(tmp / "key")
    config = yaml.safe_load((EXAMPLES / "config.yaml").read_text(encoding="utf-8"))
    config["state_dir"] = str(tmp / "state")
    config["sources"][0]["paths"] = [str(logs / "access.log")]
    config["pseudonym"]["key_file"] = str(tmp / "key")
    config["directory"]["path"] = str(EXAMPLES / "directory.yaml")
    config["rules"]["paths"] = [str(EXAMPLES / "rules.d")]
    config["respond"]["contacts"]["csv"] = str(EXAMPLES / "contacts.csv")
    config["respond"]["export_manifests"][0]["paths"] = [str(logs / "exports*.jsonl")]
    config["ops"]["metrics"]["enabled"] = False
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    c = str(path)
    _cli("replay", "-c", c, "--no-progress", "--json", str(logs / "access.log"))
    _cli("playbook", "run-due", "-c", c, "--json")
    truth = [json.loads(line) for line in (logs / "ground_truth.jsonl").read_text().splitlines()]
    bulk = [t for t in truth if t["scenario"] == "bulk_export" and "customers' records" in t["description"]]
    assert bulk, "the generator planted no bulk export of customers' records"
    incidents = _cli("incidents", "list", "-c", c, "--json")
    found = None
    for summary in incidents:
        detail = _cli("incidents", "show", "-c", c, summary["incident_id"], "--json")
        if set(detail["evidence_event_ids"]) & set(bulk[0]["event_ids"]):
            found = detail
    assert found is not None, "the planted bulk export opened no incident"
    incident = found["summary"]["incident_id"]
    # the DPO's four eyes on the customer notice, then the due steps again
    _cli("playbook", "done", "-c", c, incident, "draft-customer-notice", "--who", "alice", "--json")
    _cli("playbook", "approve", "-c", c, incident, "approve-customer-notice", "--who", "bob", "--json")
    _cli("playbook", "run-due", "-c", c, "--json")
    steps = {s["step_id"]: s for s in _cli("playbook", "show", "-c", c, incident, "--json")}
    return {"config": c, "tmp": tmp, "incident": incident, "detail": found, "bulk": bulk[0], "steps": steps}


def test_the_bulk_export_is_a_t4_leak_with_a_police_step(deployment):
    summary = deployment["detail"]["summary"]
    assert summary["actor"] == deployment["bulk"]["actor"]
    assert summary["tier"] == "T4"  # confirmed leak, far below the T3 band of 1,000,000 people
    assert summary["band"] is not None  # the insider's band (2,500 records of other PI) is reached
    police = deployment["steps"]["report-police"]
    assert police["state"] == "pending" and police["spec"]["audience"] == "police"


def test_the_regulator_report_carries_every_item(deployment):
    report = deployment["steps"]["report-initial"]
    assert report["state"] == "review"
    document = json.loads(Path(report["result"]["paths"]["json"]).read_text(encoding="utf-8"))
    assert list(document["items"]) == list(ITEMS["initial"])
    assert all(document["items"][key] not in (None, {}, []) for key in ITEMS["initial"])
    assert document["items"]["impact"]["people"] >= 40_000  # from the export manifest
    for language in ("zh-CN", "en"):
        assert Path(report["result"]["paths"][f"{language}.md"]).read_text(encoding="utf-8").count("\n## ") == 12


def test_one_notice_per_resolved_customer_in_their_language_none_to_the_insider(deployment):
    c, incident = deployment["config"], deployment["incident"]
    step = deployment["steps"]["notify-customers"]
    assert step["state"] == "done"
    pseudonymise = Pseudonymiser(load_key(deployment["tmp"] / "key", Problems()))
    contacts = {pseudonymise(row["customer_id"]): row
                for row in csv.DictReader((EXAMPLES / "contacts.csv").open(encoding="utf-8"))}
    insider = deployment["bulk"]["actor"]
    directory = yaml.safe_load((EXAMPLES / "directory.yaml").read_text(encoding="utf-8"))
    employee = next(e for e in directory["employees"] if e["id"] == insider)
    insider_addresses = {normalise_address(employee["email"]), normalise_address(employee["phone"])}
    import sqlite3

    conn = sqlite3.connect(deployment["tmp"] / "state" / "neo-auditd.db")
    rows = conn.execute("SELECT recipient, language, channel, body_path FROM notices WHERE incident_id = ?"
                        " AND audience = 'customers'", (incident,)).fetchall()
    assert len(rows) == step["result"]["recipients"] == len(contacts) - 1  # every contact but the insider's
    assert len({r[0] for r in rows}) == len(rows)  # one each
    for recipient, language, channel, path in rows:
        row = contacts[recipient]
        assert language == row["language"] and channel == row["channel"]
        body = json.loads(Path(path).read_text(encoding="utf-8"))
        assert body["to"]["address"] == row["address"] and body["language"] == row["language"]
        assert normalise_address(body["to"]["address"]) not in insider_addresses
    assert step["result"]["insider_excluded"] == 1
    report = json.loads(Path(deployment["steps"]["report-initial"]["result"]["paths"]["json"]).read_text())
    people = report["items"]["impact"]["people"]  # the incident's customers and the export's, by the manifest
    assert step["result"]["unresolved"] == people - len(contacts) > 30_000
    announce = deployment["steps"]["announce"]
    assert announce["state"] == "done" and announce["result"]["unresolved"] == step["result"]["unresolved"]
    register = _cli("register", "-c", c, "--json")
    entry = next(e for e in register if e["incident_id"] == incident)
    assert entry["unresolved_customers"] == step["result"]["unresolved"]
    rendered = sum(n["count"] for n in entry["notices"] if n["audience"] == "customers")
    assert rendered == len(rows)


def test_a_trial_on_a_copy_of_the_store_writes_nothing_where_production_keeps_its_records(deployment):
    """`--state-dir` names a copy for a trial: its reports and notices go under the copy,
    never into the production folder (whose store would not know them, and whose own
    next rendering would overwrite them)."""
    import shutil

    tmp, c, incident = deployment["tmp"], deployment["config"], deployment["incident"]
    production = tmp / "state" / "respond"

    def files(root: Path) -> dict[str, int]:
        return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}

    before = files(production)
    assert before, "the production run rendered nothing to compare with"
    trial = tmp / "trial"
    shutil.copytree(tmp / "state", trial, ignore=shutil.ignore_patterns("respond", "deliver"))
    report = _cli("report", "-c", c, "--state-dir", str(trial), incident, "--kind", "initial", "--json")
    assert all(Path(p).is_relative_to(trial / "respond") for p in report["paths"].values()), report["paths"]
    _cli("playbook", "run-due", "-c", c, "--state-dir", str(trial), "--json")
    assert files(production) == before  # not one file added or rewritten
    assert files(trial / "respond")
