#!/usr/bin/env python3
"""Does a change keep the daemon's findings? Replay one log with two versions of
neo-auditd and compare what each found.

    python scripts/compare_runs.py --base REV [--head DIR] [--lines N] [--seed S]

`--base` is a git revision, checked out into a temporary worktree; `--head` is a
checkout (default: this one). Both replay the same generated example log with the
example configuration into fresh stores, then their `--json` outputs are compared:
the replay summary (events, quarantined, alerts per rule), every incident (id, actor,
tier, status, severity, alert and affected counts, categories, rules), and the alert
ids of each incident. Wall-clock times (discovery, updates) are left out; everything
else must be equal. Exit 0 when equal, 1 with the differences otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEPT = ("incident_id", "actor", "tier", "status", "severity", "alert_count", "affected_count", "categories",
        "band", "sensitive", "first_seen", "last_seen")


def run(checkout: Path, log: Path, work: Path, key: Path) -> dict:
    """Replay with the checkout's own code (PYTHONPATH), the example config of the head."""
    work.mkdir(parents=True)
    config = work / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        f"sources:\n  - name: crm\n    paths: ['{log}']\n    format: neo-crm\n"
        f"pseudonym:\n  key_file: {key}\n"
        f"directory:\n  path: {REPO / 'examples' / 'directory.yaml'}\n"
        f"rules:\n  paths: [{REPO / 'examples' / 'rules.d'}]\n"
        "ops:\n  metrics: {enabled: false}\n")
    env = {**os.environ, "PYTHONPATH": str(checkout)}

    def neo(*args: str) -> dict | list:
        done = subprocess.run([sys.executable, "-m", "auditd.cli", *args], env=env, cwd=work,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{checkout}: neo-auditd {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout)

    summary = neo("replay", "-c", str(config), "--json", str(log))
    incidents = neo("incidents", "list", "-c", str(config), "--limit", "100000", "--json")
    details = {}
    for incident in incidents:
        shown = neo("incidents", "show", "-c", str(config), "--json", incident["incident_id"])
        details[incident["incident_id"]] = {"alerts": sorted(shown["alert_ids"]), "rules": sorted(shown["rules"])}
    return {
        "summary": {k: summary[k] for k in ("events", "quarantined", "alerts", "incidents")},
        "alerts_by_rule": summary["alerts_by_rule"],
        "incidents": sorted(({k: i.get(k) for k in KEPT} | details[i["incident_id"]] for i in incidents),
                            key=lambda i: i["incident_id"]),
    }


def differences(base: dict, head: dict) -> list[str]:
    out = []
    for part in ("summary", "alerts_by_rule"):
        if base[part] != head[part]:
            out.append(f"{part}: base {base[part]} head {head[part]}")
    b = {i["incident_id"]: i for i in base["incidents"]}
    h = {i["incident_id"]: i for i in head["incidents"]}
    for incident_id in sorted(set(b) | set(h)):
        if b.get(incident_id) != h.get(incident_id):
            out.append(f"incident {incident_id}: base {b.get(incident_id)} head {h.get(incident_id)}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare against (e.g. main~3)")
    parser.add_argument("--head", type=Path, default=REPO, help="checkout with the change (default: this one)")
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="neo-compare-") as tmp:
        tmp_path = Path(tmp)
        base_tree = tmp_path / "base-tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base_tree), args.base],
                       check=True)
        try:
            logs = tmp_path / "logs"
            subprocess.run([sys.executable, str(REPO / "examples" / "generate.py"), "--out", str(logs),
                            "--lines", str(args.lines), "--seed", str(args.seed)], check=True, capture_output=True)
            key = tmp_path / "pseudonym.key"
            key.write_bytes(os.urandom(32).hex().encode() + b"\n")
            key.chmod(0o600)
            base = run(base_tree, logs / "access.log", tmp_path / "base", key)
            head = run(args.head.resolve(), logs / "access.log", tmp_path / "head", key)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], check=False)
            shutil.rmtree(base_tree, ignore_errors=True)
    found = differences(base, head)
    print(json.dumps({"base": args.base, "lines": args.lines, "seed": args.seed,
                      "events": head["summary"]["events"], "alerts": head["summary"]["alerts"],
                      "incidents": len(head["incidents"]), "equal": not found}, indent=2))
    for line in found[:50]:
        print(line, file=sys.stderr)
    return 0 if not found else 1


if __name__ == "__main__":
    sys.exit(main())
