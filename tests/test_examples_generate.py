"""The example log generator: the documented format, its own reading of the directory,
every planted scenario with the daemon's event ids, the normal model's variance, and
determinism."""

from __future__ import annotations

import ast
import datetime as dt
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from auditd.config.located import Problems
from auditd.decode.normalise import event_id
from auditd.directory import load_directory
from auditd.sources.identity import digest, read_head

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SCRIPT = EXAMPLES / "generate.py"
GENERATOR_FILES = ("generate.py", "directory_reader.py", "scenarios.py", "score.py")
# docs/example-access-log.md
KEYS = ["ts", "app", "host", "req", "emp", "ip", "op", "res", "subjects", "count", "fields", "masked", "ticket",
        "purpose", "dest", "result"]
OPS = {"auth.login", "auth.logout", "customer.view", "customer.search", "customer.export", "customer.unmask",
       "customer.update", "customer.delete", "customer.share", "order.view", "order.list", "order.export",
       "address.view", "payment.view", "points.view", "location.view", "face.view", "report.print"}
RES_TYPES = {"customer", "address", "order", "payment", "points", "location", "face"}
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00")
LINES = 8000
GRACE = dt.timedelta(hours=1)  # examples/config.yaml's directory.shift_grace (the default)
ZONE = dt.timezone(dt.timedelta(hours=8))


def _module():
    spec = importlib.util.spec_from_file_location("neo_example_generate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


generate = _module()
from scenarios import SCENARIOS  # noqa: E402 - beside generate.py, which put it on the path


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    generate.generate(out, LINES, seed=5, start=dt.date(2026, 11, 2))
    return out


@pytest.fixture(scope="module")
def raw(out):
    return (out / "access.log").read_bytes()


@pytest.fixture(scope="module")
def records(raw):
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


@pytest.fixture(scope="module")
def truth(out):
    return [json.loads(line) for line in (out / "ground_truth.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def planted_reqs(truth):
    return {req for row in truth for req in row["reqs"]}


def test_the_generator_imports_nothing_from_the_daemon(tmp_path):
    for name in GENERATOR_FILES:
        tree = ast.parse((EXAMPLES / name).read_text(encoding="utf-8"))
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m and m.split(".")[0] == "auditd"], name
    # and it runs where the daemon cannot be imported at all
    blocked = ("import runpy, sys\n"
               "sys.modules['auditd'] = None  # any import of the daemon raises ImportError\n"
               f"sys.argv = ['generate.py', '--out', {str(tmp_path / 'o')!r}, '--lines', '3000']\n"
               f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", blocked], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=""))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "ground_truth.jsonl").stat().st_size > 0


def test_every_line_is_json_with_the_documented_keys_in_order(records):
    assert len(records) == LINES
    for r in records:
        keys = list(r)
        assert keys == [k for k in KEYS if k in r]  # documented keys only, in the documented order
        assert {"ts", "app", "host", "req", "emp", "ip", "op", "result"} <= set(r)
        assert TS.fullmatch(r["ts"]) and r["op"] in OPS and r["result"] in ("ok", "denied", "error")
        assert set(r["emp"]) == {"id", "name"}
        if r["op"].startswith("auth."):
            assert set(r) == {"ts", "app", "host", "req", "emp", "ip", "op", "result"}
            continue
        assert r["res"]["type"] in RES_TYPES and set(r["res"]) <= {"type", "id", "store"}
        assert isinstance(r["count"], int) and isinstance(r["masked"], bool) and r["fields"]
        if "subjects" in r:
            assert len(r["subjects"]) == r["count"] and all(re.fullmatch(r"C\d{8}", s) for s in r["subjects"])
        else:
            assert r["count"] > 50  # only big results leave their subjects out
        assert set(r.get("dest", {})) <= {"partner", "host", "ip", "country"}


def test_lines_are_in_time_order_with_unique_request_ids(records):
    stamps = [dt.datetime.fromisoformat(r["ts"]) for r in records]
    assert stamps == sorted(stamps)
    assert len({r["req"] for r in records}) == LINES


def test_every_scenario_is_in_the_ground_truth_with_the_daemons_event_ids(out, raw, records, truth):
    assert Counter(row["scenario"] for row in truth) == {name: 2 for name, _ in SCENARIOS}
    with open(out / "access.log", "rb") as f:
        fingerprint = digest(read_head(f.fileno(), 1024))  # as the tailer and replay compute it
    line_at = {}
    offset = 0
    for n, line in enumerate(raw.split(b"\n")[:-1], 1):
        line_at[offset] = n
        offset += len(line) + 1
    for row in truth:
        assert row["model"] == generate.MODEL_VERSION and row["description"] and row["actor"]
        assert row["needs"] == list(dict(SCENARIOS)[row["scenario"]])
        assert len(row["event_ids"]) == len(row["reqs"]) == len(row["lines"]) >= 1
        for eid, req, line in zip(row["event_ids"], row["reqs"], row["lines"]):
            offset = int(eid.rpartition(":")[2])
            assert eid == event_id(fingerprint, offset)  # the daemon's own function
            assert line_at[offset] == line
            record = records[line - 1]
            assert record["req"] == req and record["emp"]["id"] == row["actor"] and record["result"] == "ok"
        assert row["time"] == records[row["lines"][0] - 1]["ts"]


def test_each_scenario_is_wrong_in_its_own_way(records, truth):
    first = {}
    for row in truth:
        first.setdefault(row["scenario"], [records[n - 1] for n in row["lines"]])
    assert first["category_not_granted"][0]["op"] == "payment.view"
    assert first["export_outside_mainland"][0]["dest"]["country"] != "CN"
    bulk = [r for row in truth if row["scenario"] == "bulk_export" for r in (records[row["lines"][0] - 1],)]
    assert all(r["count"] >= 40_000 and "subjects" not in r for r in bulk)
    assert {r["res"]["type"] for r in bulk} == {"customer", "points"}  # within the grant, and not
    assert set(first["share_beyond_allowance"][0]["fields"]) - {"name", "phone", "address"}
    assert "ticket" not in first["missing_purpose"][0] and "purpose" not in first["missing_purpose"][0]
    assert first["off_shift"][0]["ts"][11:13] == "03"
    departed = first["departed_access"]
    assert {r["emp"]["id"] for r in departed} == {"E10046"} and all(r["ip"].startswith("10.88.") for r in departed)
    assert all(r.get("ticket") for r in departed)
    scraped = first["night_scraping"]
    assert len(scraped) >= 150 and all(0 <= int(r["ts"][11:13]) < 4 for r in scraped)
    ids = [int(r["subjects"][0][1:]) for r in first["id_enumeration"]]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert first["first_category"][0]["op"] == "customer.view"
    assert len(first["export_burst"]) >= 10 and {r["op"] for r in first["export_burst"]} == {"customer.export"}
    dpo = [records[n - 1] for row in truth if row["scenario"] == "dpo_outside_request" for n in row["lines"]]
    assert {r["emp"]["id"] for r in dpo} == {"E10058"}
    assert {r.get("purpose") for r in dpo} == {"internal-review", "data-subject-request"}


def test_normal_lines_come_from_staff_at_work_as_the_daemon_reads_the_directory(records, planted_reqs):
    """The generator's own directory reader against the daemon's: every normal line is
    by someone employed, in a role they held then, within an hour of their shift."""
    directory = load_directory(EXAMPLES / "directory.yaml", Problems())
    overtime = 0
    for r in records:
        if r["req"] in planted_reqs:
            continue
        when = dt.datetime.fromisoformat(r["ts"])
        view = directory.employee_as_of(r["emp"]["id"], when)
        assert view is not None and view.status == "active" and view.roles, r
        shift = view.employee.shift
        if not shift.covers(when.astimezone(ZONE)):
            overtime += 1
            assert shift.covers((when - GRACE).astimezone(ZONE)) or shift.covers((when + GRACE).astimezone(ZONE)), r
        if view.store is not None and view.roles[0].id in ("store_clerk", "store_manager") and "res" in r:
            assert r["res"].get("store", view.store) == view.store  # store staff serve their own store
    assert overtime > 0  # staff do stay late


def test_the_normal_model_has_the_variance_real_staff_have(records, planted_reqs):
    normal = [r for r in records if r["req"] not in planted_reqs]
    by_person_day = Counter((r["emp"]["id"], r["ts"][:10]) for r in normal)
    # a team that works Saturdays: finance on 2026-11-07, the other office roles not
    saturday = {r["emp"]["id"] for r in normal if r["ts"].startswith("2026-11-07")}
    assert {"E10051", "E10052", "E10053", "E10054"} & saturday and not {"E10055", "E10058"} & saturday
    # a promotion on 2026-11-05: manager's work only from then
    e10020 = [r for r in normal if r["emp"]["id"] == "E10020" and r["op"] in ("points.view", "payment.view",
                                                                              "customer.export", "customer.unmask")]
    assert e10020 and min(r["ts"] for r in e10020) >= "2026-11-05"
    # a new hire on 2026-11-04
    assert min(r["ts"] for r in normal if r["emp"]["id"] == "E10038") >= "2026-11-04"
    # leave: a clerk on an early shift with no line on some working weekday
    clerks = {r["emp"]["id"] for r in normal if r["app"] == "pos"}
    weekdays = [f"2026-11-0{d}" for d in range(2, 8)]
    assert any(by_person_day[(c, d)] == 0 for c in clerks for d in weekdays)
    # the DPO's work is data-subject requests, with that purpose, on a request ticket
    dpo = [r for r in normal if r["emp"]["id"] == "E10058" and "res" in r]
    assert dpo and all(r["purpose"].startswith("data-subject-") and r["ticket"].startswith("DSR-") for r in dpo)


def test_the_same_seed_gives_the_same_bytes_and_the_cli_agrees(out, tmp_path):
    env = dict(os.environ, PYTHONHASHSEED="12345")  # a different hash seed must not matter
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "cli"), "--lines", str(LINES),
                    "--seed", "5", "--start", "2026-11-02"], check=True, env=env, capture_output=True)
    for name in ("access.log", "ground_truth.jsonl"):
        assert (tmp_path / "cli" / name).read_bytes() == (out / name).read_bytes()
    generate.generate(tmp_path / "other", LINES, seed=6, start=dt.date(2026, 11, 2))
    assert (tmp_path / "other" / "access.log").read_bytes() != (out / "access.log").read_bytes()


def test_too_few_lines_for_the_planted_ones_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="at least"):
        generate.generate(tmp_path, 10, seed=1, start=dt.date(2026, 11, 2))
