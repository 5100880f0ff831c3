"""End to end: the example deployment's generated log, replayed through the whole
pipeline, yields an entitlement or departed alert for every planted least-privilege and
departed-staff line, with the right reason, and for nothing else (precision and recall
1.0 against examples' ground_truth.jsonl).

Until the runtime builds the entitlement checker and the working-day calendar itself,
this test wires them into the loaded runtime the way runtime.py will; once it does,
the test runs `neo-auditd replay` as a subprocess, as a user would.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from auditd.enrich import Enricher
from auditd.enrich.pseudonym import create_key_file
from auditd.entitlement import EntitlementChecker, reason_code
from auditd.event import AccessEvent
from auditd.runtime import Runtime, load_runtime
from auditd.opening import open_store
from auditd.replay import replay
from auditd.workdays import WorkingCalendar

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LINES = 50_000
# ground-truth kind -> the reason code the checker must give (departed: the departed kind)
EXPECTED = {
    "departed_access": "departed",
    "category_not_granted": "category_not_granted",
    "out_of_scope": "out_of_scope",
    "missing_purpose": "purpose_missing",
    "unmask_without_grant": "unmasked_without_grant",
    "share_beyond_allowance": "share_fields_beyond_allowance",
    "export_outside_mainland": "destination_not_allowed",
}
OUR_KINDS = ("entitlement", "departed")


def _generator():
    spec = importlib.util.spec_from_file_location("neo_example_generate_e2e", REPO / "examples" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    _generator().generate(tmp / "data", LINES, seed=11, start=dt.date(2026, 11, 2), per_kind=3)
    create_key_file(tmp / "pseudonym.key")
    config = tmp / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n  - {name: crm, paths: [data/access.log], format: neo-crm}\n"
        "pseudonym: {key_file: pseudonym.key}\n"
        f"directory: {{path: {REPO / 'examples' / 'directory.yaml'}}}\n"
        f"rules: {{paths: [{REPO / 'examples' / 'rules.d'}]}}\n", encoding="utf-8")
    state = tmp / "state"
    _run(config, tmp / "data" / "access.log", state)
    truth = [json.loads(line) for line in (tmp / "data" / "ground_truth.jsonl").read_text("utf-8").splitlines()]
    return state / "neo-auditd.db", truth


def _run(config: Path, log: Path, state: Path) -> None:
    runtime = load_runtime(config)
    if runtime.enricher.entitlement is not None:  # the lead's wiring is in: run the CLI
        proc = subprocess.run([sys.executable, "-m", "auditd.cli", "replay", "-c", str(config), "--state-dir",
                               str(state), "--json", str(log)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout)["events"] == LINES
        return
    runtime = _wired(runtime)
    store, quarantine = open_store(runtime, state)
    try:
        assert replay(runtime, store, quarantine, [log], "crm").totals.events == LINES
    finally:
        store.close()


def _wired(runtime: Runtime) -> Runtime:
    """What runtime.py will build: the checker and the calendar in the enricher."""
    old = runtime.enricher
    checker = EntitlementChecker(pseudonymise=old.pseudonymiser, zone=runtime.settings.zone)
    enricher = Enricher(runtime.directory, old.pseudonymiser, sensitive_categories=old.sensitive_categories,
                        pseudonymised_resource_types=old.pseudonymised_resource_types, zone=old.zone,
                        working_days_between=WorkingCalendar().working_days_between, entitlement=checker)
    return dataclasses.replace(runtime, enricher=enricher)


def _alerts_by_request(db: Path) -> dict[str, list[dict]]:
    import sqlite3

    decode = msgspec.msgpack.Decoder(AccessEvent).decode
    with sqlite3.connect(db) as conn:
        request_of = {eid: decode(doc).request_id for eid, doc in conn.execute("SELECT event_id, doc FROM evidence")}
        alerts = [json.loads(doc) for (doc,) in conn.execute("SELECT doc FROM alerts")]
    out: dict[str, list[dict]] = {}
    for alert in alerts:
        if alert["rule_kind"] in OUR_KINDS:
            for event_id in alert["event_ids"]:
                out.setdefault(request_of[event_id], []).append(alert)
    return out


def _planted(truth: list[dict]) -> tuple[dict[str, str], set[str]]:
    """Request id -> scenario for this test's scenarios, and every other planted request
    (a bulk export of points, the DPO's share: planted elsewhere, outside the grant too)."""
    mine = {req: t["scenario"] for t in truth if t["scenario"] in EXPECTED for req in t["reqs"]}
    other = {req for t in truth if t["scenario"] not in EXPECTED for req in t["reqs"]}
    return mine, other


def test_precision_and_recall_are_one(replayed):
    db, truth = replayed
    planted, other = _planted(truth)
    assert len({t["scenario"] + t["reqs"][0] for t in truth if t["scenario"] in EXPECTED}) == 3 * len(EXPECTED)
    flagged = {req: alerts for req, alerts in _alerts_by_request(db).items() if req not in other}
    found = {req for req, alerts in flagged.items()
             if req in planted and any(_code(a) == EXPECTED[planted[req]] for a in alerts)}
    precision = len(found) / len(flagged) if flagged else 0.0
    recall = len(found) / len(planted)
    print(f"\nentitlement/departed alerts on {LINES:,} lines: {len(flagged)} accesses flagged, "
          f"{len(planted)} planted; precision {precision:.3f}, recall {recall:.3f}")
    assert sorted(set(planted) - found) == [], "missed"
    assert sorted(set(flagged) - found) == [], "raised on normal traffic (or with the wrong reason)"
    assert (precision, recall) == (1.0, 1.0)


def test_each_planted_access_raises_one_alert_of_ours(replayed):
    db, _ = replayed
    flagged = _alerts_by_request(db)
    for alerts in flagged.values():
        assert len(alerts) == 1, [a["rule_id"] for a in alerts]
    departed = [a for alerts in flagged.values() for a in alerts if a["rule_kind"] == "departed"]
    assert {a["severity"] for a in departed} == {"high"} and {a["actor"] for a in departed} == {"E10046"}


def test_the_checker_judged_every_normal_access_entitled(replayed):
    """Stronger than the alerts: the facts on every stored event."""
    import sqlite3

    db, truth = replayed
    planted, other = _planted(truth)
    decode = msgspec.msgpack.Decoder(list[AccessEvent]).decode
    denied, unjudged, judged = set(), 0, 0
    with sqlite3.connect(db) as conn:
        for (doc,) in conn.execute("SELECT doc FROM event_segments"):
            for event in decode(doc):
                judged += event.entitlement_granted is not None
                unjudged += event.entitlement_reason is not None and event.entitlement_granted is None
                if event.entitlement_granted is False:
                    denied.add(event.request_id)
    assert judged == LINES and unjudged == 0
    assert set(planted) <= denied <= set(planted) | other


def _code(alert: dict) -> str | None:
    return reason_code(alert.get("reason"))
