"""`neo-auditd review grants` as a user runs it, on a replayed example log.

The subcommand is wired by the CLI module; until it is, this test says so by skipping
with the reason (the function underneath is tested in test_review_grants.py).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from auditd.enrich.pseudonym import create_key_file

REPO = Path(__file__).resolve().parents[1]



def neo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditd.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("review")
    spec = importlib.util.spec_from_file_location("neo_example_generate_review", REPO / "examples" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.generate(tmp / "data", 20_000, seed=3, start=dt.date(2026, 11, 2))
    create_key_file(tmp / "pseudonym.key")
    config = tmp / "config.yaml"
    config.write_text("state_dir: state\nsources:\n  - {name: crm, paths: [data/access.log], format: neo-crm}\n"
                      f"pseudonym: {{key_file: pseudonym.key}}\ndirectory: {{path: {REPO / 'examples' / 'directory.yaml'}}}\n",
                      encoding="utf-8")
    proc = neo("replay", "-c", str(config), "--json", str(tmp / "data" / "access.log"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return config


def test_review_grants_json(replayed):
    proc = neo("review", "grants", "-c", str(replayed), "--since", "7d", "--until", "2026-11-09T00:00", "--json")
    assert proc.returncode == 0, proc.stderr
    review = json.loads(proc.stdout)
    assert review["events"] > 15_000
    roles = {r["role"]: r for r in review["roles"]}
    assert roles["it_admin"]["grants"][0]["categories"] == ["device"]
    assert roles["it_admin"]["grants"][0]["exercised"] == {}  # IT admins never needed device data
    assert roles["store_clerk"]["grants"][0]["exercised"]["identity:read"] > 0
    assert all(e["user_id"] not in ("E10007", "E10046") for e in review["employees"])  # gone: nothing to revoke


def test_review_grants_table_and_bad_period(replayed):
    proc = neo("review", "grants", "-c", str(replayed), "--since", "7d", "--until", "2026-11-09T00:00")
    assert proc.returncode == 0 and proc.stdout.startswith("Grant review 2026-11-02 00:00 .. 2026-11-09 00:00 (Asia/Shanghai)")
    assert "ALL (unused grant)" in proc.stdout
    bad = neo("review", "grants", "-c", str(replayed), "--since", "a while")
    assert bad.returncode == 2 and "expected a duration" in bad.stderr
