"""The example log generator: the documented format, planted violations, determinism."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from auditd.config.located import Problems
from auditd.directory import load_directory

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "generate.py"
# docs/example-access-log.md
KEYS = ["ts", "app", "host", "req", "emp", "ip", "op", "res", "subjects", "count", "fields", "masked", "ticket",
        "purpose", "dest", "result"]
OPS = {"auth.login", "auth.logout", "customer.view", "customer.search", "customer.export", "customer.unmask",
       "customer.update", "customer.delete", "customer.share", "order.view", "order.list", "order.export",
       "address.view", "payment.view", "points.view", "location.view", "face.view", "report.print"}
RES_TYPES = {"customer", "address", "order", "payment", "points", "location", "face"}
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00")
LINES = 4000


def _module():
    spec = importlib.util.spec_from_file_location("neo_example_generate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


generate = _module()


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    generate.generate(out, LINES, seed=5, start=dt.date(2026, 11, 2))
    return out


@pytest.fixture(scope="module")
def records(out):
    return [json.loads(line) for line in (out / "access.log").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def truth(out):
    return [json.loads(line) for line in (out / "ground_truth.jsonl").read_text(encoding="utf-8").splitlines()]


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


def test_every_kind_is_planted_and_each_req_is_on_its_line(records, truth):
    assert sorted(t["kind"] for t in truth) == sorted(generate.KINDS * 2)
    for t in truth:
        record = records[t["line"] - 1]
        assert record["req"] == t["req"] and record["emp"]["id"] == t["user_id"]
        assert record["result"] == "ok" and t["description"]
    by_kind = {t["kind"]: records[t["line"] - 1] for t in truth}
    assert by_kind["category_not_granted"]["op"] == "payment.view"
    assert by_kind["export_outside_mainland"]["dest"]["country"] != "CN"
    assert by_kind["bulk_export"]["count"] >= 40_000
    assert set(by_kind["share_beyond_allowance"]["fields"]) - {"name", "phone", "address"}
    assert "ticket" not in by_kind["missing_purpose"] and "purpose" not in by_kind["missing_purpose"]
    assert by_kind["off_shift"]["ts"][11:13] == "03"


def test_normal_lines_come_from_staff_at_work(records, truth):
    directory = load_directory(REPO / "examples" / "directory.yaml", Problems())
    planted = {t["req"] for t in truth}
    zone = dt.timezone(dt.timedelta(hours=8))
    for r in records:
        if r["req"] in planted:
            continue
        when = dt.datetime.fromisoformat(r["ts"])
        view = directory.employee_as_of(r["emp"]["id"], when)
        assert view is not None and view.status == "active" and view.roles
        assert view.employee.shift.covers(when.astimezone(zone)), r
        if view.store is not None and view.roles[0].id in ("store_clerk", "store_manager") and "res" in r:
            assert r["res"].get("store", view.store) == view.store  # store staff serve their own store


def test_the_same_seed_gives_the_same_bytes_and_the_cli_agrees(out, tmp_path):
    env = dict(os.environ, PYTHONHASHSEED="12345")  # a different hash seed must not matter
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "cli"), "--lines", str(LINES),
                    "--seed", "5", "--start", "2026-11-02"], check=True, env=env, capture_output=True)
    for name in ("access.log", "ground_truth.jsonl"):
        assert (tmp_path / "cli" / name).read_bytes() == (out / name).read_bytes()
    generate.generate(tmp_path / "other", LINES, seed=6, start=dt.date(2026, 11, 2))
    assert (tmp_path / "other" / "access.log").read_bytes() != (out / "access.log").read_bytes()


def test_too_few_lines_for_the_planted_ones_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="at least 18"):
        generate.generate(tmp_path, 10, seed=1, start=dt.date(2026, 11, 2))
