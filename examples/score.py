#!/usr/bin/env python3
"""Score neo-auditd's alerts against the example log's ground truth.

    python examples/score.py -c examples/config.yaml --truth examples/out/logs/ground_truth.jsonl

Reads the alerts through the daemon's command line (`incidents list --json`, then
`incidents show ID --json`) and the planted scenarios from ground_truth.jsonl (written
by generate.py, which does not use the daemon either), and prints, per planted
scenario, whether it was found, missed, or not yet covered, and how many alerts match
no planted scenario. It imports nothing from the daemon: what it knows of it is the
JSON it prints and the rule files' `kind:` keys.

A scenario whose `needs` is empty is found by any alert on one of its events. One that
needs rule kinds (threshold, baseline, first_seen, ...) is found only by an alert of
such a kind; while no rule file defines one, it is "not yet covered", and alerts of
other rules on its events are listed beside it (they are explained, not unexplained).

Exit status: 0 when every covered scenario is found and no alert is unexplained, 1
otherwise, 2 when the daemon's output cannot be read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def neo_command() -> list[str]:
    found = shutil.which("neo-auditd")
    venv = REPO / ".venv" / "bin" / "neo-auditd"
    if os.environ.get("NEO_AUDITD"):
        return [os.environ["NEO_AUDITD"]]
    return [str(venv)] if venv.exists() else ([found] if found else [sys.executable, "-m", "auditd.cli"])


def read_alerts(neo: list[str], config: Path, state_dir: Path | None) -> list[dict]:
    """Every alert of every incident in the store, with its incident id."""
    extra = ["--state-dir", str(state_dir)] if state_dir else []

    def run(*args: str) -> object:
        proc = subprocess.run([*neo, *args, "-c", str(config), *extra, "--json"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"score: {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        return json.loads(proc.stdout)

    alerts = []
    for incident in run("incidents", "list", "--limit", "1000000"):
        detail = run("incidents", "show", incident["incident_id"])
        for alert in detail.get("alerts", []):
            alerts.append(dict(alert, incident_id=incident["incident_id"], tier=incident["tier"]))
        if len(detail.get("alerts", [])) < incident["alert_count"]:
            print(f"score: {incident['incident_id']} shows {len(detail['alerts'])} of its "
                  f"{incident['alert_count']} alerts; the rest are not scored", file=sys.stderr)
    return alerts


def rule_kinds(paths: list[Path]) -> set[str]:
    """The kinds of the rules the rule files define (a rule without `kind:` is a match rule)."""
    kinds: set[str] = set()
    files = [p for path in paths for p in (sorted(path.glob("*.yaml")) if path.is_dir() else [path]) if p.exists()]
    for file in files:
        for item in yaml.safe_load(file.read_text(encoding="utf-8")) or []:
            if isinstance(item, dict) and "rule" in item and ("condition" in item or "kind" in item) \
                    and item.get("enabled", True) is not False:
                kinds.add(item.get("kind", "match"))
    return kinds


def score(truth: list[dict], alerts: list[dict], kinds: set[str]) -> dict:
    owner: dict[str, int] = {}
    for i, row in enumerate(truth):
        for event_id in row["event_ids"]:
            owner[event_id] = i
    on_scenario: dict[int, list[dict]] = {}
    unexplained = []
    for alert in alerts:
        hit = {owner[e] for e in alert["event_ids"] if e in owner}
        if not hit:
            unexplained.append(alert)
        for i in hit:
            on_scenario.setdefault(i, []).append(alert)
    rows = []
    for i, row in enumerate(truth):
        seen = on_scenario.get(i, [])
        needs = row.get("needs") or []
        finders = [a for a in seen if not needs or a["rule_kind"] in needs]
        if finders:
            result = "found"
        elif needs and not kinds.intersection(needs):
            result = "not yet covered"
        else:
            result = "missed"
        rows.append({
            "scenario": row["scenario"], "actor": row["actor"], "time": row["time"],
            "events": len(row["event_ids"]), "needs": needs, "result": result,
            "alerts": len(seen), "rules": sorted({a["rule_id"] for a in seen}),
            "tiers": sorted({a["tier"] for a in seen}),
            "events_alerted": len({e for a in seen for e in a["event_ids"] if owner.get(e) == i}),
        })
    by_rule: dict[str, int] = {}
    for alert in unexplained:
        by_rule[alert["rule_id"]] = by_rule.get(alert["rule_id"], 0) + 1
    return {
        "scenarios": rows,
        "found": sum(r["result"] == "found" for r in rows),
        "missed": sum(r["result"] == "missed" for r in rows),
        "not_yet_covered": sum(r["result"] == "not yet covered" for r in rows),
        "alerts": len(alerts),
        "unexplained_alerts": len(unexplained),
        "unexplained_by_rule": dict(sorted(by_rule.items())),
        "unexplained_examples": [{"rule_id": a["rule_id"], "title": a["title"], "incident_id": a["incident_id"]}
                                 for a in unexplained[:10]],
        "model": sorted({row.get("model") for row in truth}, key=str),
    }


def render(report: dict) -> str:
    head = ("SCENARIO", "ACTOR", "TIME (Asia/Shanghai)", "EVENTS", "RESULT", "ALERTS", "TIER", "BY")
    rows = []
    for r in report["scenarios"]:
        when = dt.datetime.fromisoformat(r["time"]).strftime("%Y-%m-%d %H:%M")
        result = r["result"] + (f" (needs {'/'.join(r['needs'])})" if r["result"] == "not yet covered" else "")
        rows.append((r["scenario"], r["actor"], when, str(r["events"]), result, str(r["alerts"]),
                     ",".join(r["tiers"]) or "-", ", ".join(r["rules"]) or "-"))
    widths = [max(len(c) for c in column) for column in zip(head, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in (head, *rows)]
    lines.append("")
    lines.append(f"{report['found']} found, {report['missed']} missed, {report['not_yet_covered']} not yet covered "
                 f"(of {len(report['scenarios'])} planted); {report['alerts']} alerts in all")
    lines.append(f"alerts that match no planted scenario: {report['unexplained_alerts']}"
                 + (f" ({', '.join(f'{k} {v}' for k, v in report['unexplained_by_rule'].items())})"
                    if report["unexplained_by_rule"] else ""))
    for example in report["unexplained_examples"]:
        lines.append(f"  {example['incident_id']}  {example['rule_id']}: {example['title']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", type=Path, default=HERE / "config.yaml", help="the daemon's config")
    parser.add_argument("--truth", type=Path, default=HERE / "out" / "logs" / "ground_truth.jsonl",
                        help="the planted scenarios, as generate.py wrote them "
                             "(default examples/out/logs/ground_truth.jsonl)")
    parser.add_argument("--state-dir", type=Path, help="the store to read, if not the config's")
    parser.add_argument("--rules", type=Path, nargs="*", default=[REPO / "rules", HERE / "rules.d"],
                        help="rule files and folders whose kinds count as covered")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    truth = [json.loads(line) for line in args.truth.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        alerts = read_alerts(neo_command(), args.config, args.state_dir)
    except (json.JSONDecodeError, KeyError) as exc:
        print(f"score: cannot read the daemon's output: {exc}", file=sys.stderr)
        return 2
    report = score(truth, alerts, rule_kinds(args.rules))
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else render(report))
    covered = [r for r in report["scenarios"] if r["result"] != "not yet covered"]
    return 0 if all(r["result"] == "found" for r in covered) and not report["unexplained_alerts"] else 1


if __name__ == "__main__":
    sys.exit(main())
