"""Every YAML example in README.md and docs/ goes through the loader it documents.

A documented example that does not load is a bug: `extends:` with `categories: {map:
...}` (documented in the cloudtrail format) crashed `check` with an AttributeError. A
config example is loaded as a config and every source's format compiled; a format
example (`kind:` or `extends:`) as a format file; a list of rule items as a rule file,
samples run. A fragment that is only part of a config (`sources:` alone) is completed
with the keys a config needs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from auditd.config.located import Problems
from auditd.settings import SHIPPED_RULES, load_settings
from auditd.decode import load_format
from auditd.detect import load_rules
from auditd.detect.testing import run_rule_tests

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)
CONFIG_KEYS = {"state_dir", "sources", "pseudonym", "formats", "respond", "deliver", "elastic", "correlate",
               "entitlement", "working_days", "ops", "store", "pipeline", "directory", "rules", "categories"}
MINIMAL = {"state_dir": "/var/lib/neo-auditd", "pseudonym": {"key_file": "/etc/neo-auditd/pseudonym.key"},
           "sources": []}


def examples() -> list[tuple[str, str]]:
    out = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 2
            out.append((f"{document.relative_to(REPO)}:{line}", match.group(1)))
    return out


def test_there_are_examples_of_each_kind():
    kinds = [kind_of(yaml.safe_load(block)) for _, block in examples()]
    assert {"config", "format", "rules"} <= set(kinds)


def kind_of(data) -> str:
    if isinstance(data, list):
        return "rules"
    if isinstance(data, dict) and {"kind", "extends"} & set(data):
        return "format"
    if isinstance(data, dict) and CONFIG_KEYS & set(data):
        return "config"
    if isinstance(data, dict) and "playbook" in data:
        return "playbook"
    return "unknown"


@pytest.mark.parametrize(("where", "block"), examples(), ids=[w for w, _ in examples()])
def test_the_example_loads(where, block, tmp_path):
    data = yaml.safe_load(block)
    kind = kind_of(data)
    problems = Problems()
    if kind == "config":
        missing = {k: v for k, v in MINIMAL.items() if k not in data}
        text = block + ("\n" + yaml.safe_dump(missing) if missing else "")
        (tmp_path / "config.yaml").write_text(text)
        settings, doc = load_settings(tmp_path / "config.yaml", problems)
        assert not problems.items, f"{where}: {[str(p) for p in problems.items]}"
        for i, source in enumerate(settings.sources):
            fmt = load_format(source.format, problems, custom=settings.formats, referrer=doc,
                              key_path=("sources", i, "format"), categories=frozenset(settings.categories))
            assert fmt is not None, f"{where}: {[str(p) for p in problems.items]}"
    elif kind == "format":
        (tmp_path / "format.yaml").write_text(block)
        fmt = load_format(tmp_path / "format.yaml", problems)
        assert fmt is not None and not problems.items, f"{where}: {[str(p) for p in problems.items]}"
    elif kind == "rules":  # an operator's file, loaded after the shipped rules it may tune
        (tmp_path / "rules.yaml").write_text(block)
        load_rules([SHIPPED_RULES, tmp_path / "rules.yaml"], problems)
        assert not problems.items, f"{where}: {[str(p) for p in problems.items]}"
        report = run_rule_tests([SHIPPED_RULES, tmp_path / "rules.yaml"])
        assert report.exit_code == 0, f"{where}: {report.text}"
    elif kind == "playbook":  # an operator's playbook, as `respond.playbooks.paths` loads it
        from auditd.respond.playbook import load_playbooks

        (tmp_path / "T.yaml").write_text(block)
        load_playbooks([tmp_path / "T.yaml"], problems)
        assert not problems.items, f"{where}: {[str(p) for p in problems.items]}"
    else:
        pytest.fail(f"{where}: not a config, format, rule or playbook example")


def test_a_format_that_extends_one_and_gives_only_a_category_map_keeps_its_path(tmp_path):
    # main: AttributeError: 'NoneType' object has no attribute 'split' (check crashed)
    (tmp_path / "format.yaml").write_text(
        "extends: cloudtrail\ncategories:\n  map: {crm-exports: [identity, contact]}\n")
    problems = Problems()
    fmt = load_format(tmp_path / "format.yaml", problems)
    assert not problems.items
    record = (b'{"eventTime": "2026-11-02T01:00:00Z", "eventName": "GetObject", "eventSource": "s3.amazonaws.com",'
              b' "requestParameters": {"bucketName": "crm-exports", "key": "a.csv"}}')
    assert fmt.facts(record)["categories"] == ("identity", "contact")


def test_categories_without_a_path_anywhere_is_a_located_problem(tmp_path):
    (tmp_path / "format.yaml").write_text(
        "kind: jsonl\nfields:\n  '@timestamp': {path: t}\n  event.action: {path: a}\ncategories:\n  map: {x: [identity]}\n")
    problems = Problems()
    assert load_format(tmp_path / "format.yaml", problems) is None
    assert [str(p) for p in problems.items] == [
        f"{tmp_path}/format.yaml:6:3: categories: give exactly one of path, paths (here, or in the format it extends)"]
