"""Cluster rules in the one rule language: `scope: cluster` where it makes sense, and
the old `scale_out` threshold rules refused with what to write instead (exit 78)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from auditd.config.located import Problems
from auditd.detect import load_rules
from auditd.enrich.pseudonym import create_key_file

OLD = """\
state_dir: state
sources:
  - {name: crm, paths: [logs/access.log], format: neo-crm}
pseudonym: {key_file: pseudonym.key}
rules: {include_shipped: false}
elastic:
  hosts: ['http://127.0.0.1:9200']
  scale_out:
    partitions: 8
    lease_ttl: 30s
    rules:
      - {id: bulk-readers, title: "Many customers read", distinct: neo.data.subject_ids,
         threshold: 200, window: 1h, filter: {event.action: [read, search]}}
"""


def neo(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditd.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_an_old_scale_out_config_is_refused_at_its_line_with_what_to_write_instead(tmp_path: Path) -> None:
    create_key_file(tmp_path / "pseudonym.key")
    config = tmp_path / "config.yaml"
    config.write_text(OLD)
    result = neo("check", "-c", config, "--offline")
    assert result.returncode == 78, (result.stdout, result.stderr)
    (line,) = [l for l in result.stderr.splitlines() if "scale_out" in l]
    assert line.startswith(f"error: {config}:9:5:")  # file:line of the old block
    assert "elastic.scale_out: scale_out and its threshold rules are gone" in line
    suggested = line.split("in a rules file: ", 1)[1].split(" and elastic.cluster:")[0]
    assert "scope: cluster" in suggested and "kind: threshold" in suggested
    assert "gte: 200" in suggested and "distinct: neo.data.subject_ids" in suggested and "timespan: 1h" in suggested
    assert "condition: \"event.action in (read, search)\"" in suggested
    assert "elastic.cluster: {partitions: 8, lease_ttl: 30s}" in line

    # what it says to write loads: the suggested rule, in a rule file, with the cluster section
    import yaml

    rules = tmp_path / "rules.d"
    rules.mkdir()
    rule = yaml.safe_load(suggested.removeprefix("- "))
    rule["samples"] = {"match": [{"sequence": [{"repeat": 200, "every": "1s", "event": {
        "user.id": "E1", "event.action": "read", "neo.data.subject_ids": ["p:{n}"]}}]}]}
    (rules / "cluster.yaml").write_text(yaml.safe_dump([rule], allow_unicode=True))
    fixed = OLD.split("  scale_out:")[0].replace("rules: {include_shipped: false}",
                                                 f"rules: {{include_shipped: false, paths: [{rules}]}}")
    config.write_text(fixed + "  cluster: {partitions: 8, lease_ttl: 30s}\n")
    again = neo("check", "-c", config, "--offline")
    assert again.returncode == 0, again.stderr
    tested = neo("test-rules", "--rules", rules)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _problems(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "r.yaml").write_text(text)
    problems = Problems()
    load_rules([tmp_path / "r.yaml"], problems)
    return [str(p) for p in problems.items]


def test_scope_cluster_is_refused_for_a_per_event_kind(tmp_path: Path) -> None:
    problems = _problems(tmp_path, """
- rule: bulk_export
  desc: An export of many records.
  scope: cluster
  condition: event.action = export
  severity: high
  tags: [stable]
""")
    assert len(problems) == 1 and ":4:10: [0].scope: rule 'bulk_export': scope cluster is for the kinds" in problems[0]
    assert "remove 'scope'" in problems[0]


@pytest.mark.parametrize("scope", ["everywhere", "Cluster"])
def test_an_unknown_scope_names_the_valid_ones(tmp_path: Path, scope: str) -> None:
    problems = _problems(tmp_path, f"""
- rule: many
  desc: Many reads.
  kind: threshold
  scope: {scope}
  params: {{gte: 5, timespan: 1m}}
  condition: event.action = read
  severity: high
  tags: [stable]
""")
    assert problems and "[0].scope" in problems[0] and "local" in problems[0] and "cluster" in problems[0]


def test_a_cluster_rule_without_an_elastic_section_is_a_located_error(tmp_path: Path) -> None:
    create_key_file(tmp_path / "pseudonym.key")
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "c.yaml").write_text("""
- rule: many
  desc: Many reads across hosts.
  kind: threshold
  scope: cluster
  params: {gte: 5, timespan: 1m}
  condition: event.action = read
  severity: high
  tags: [stable]
""")
    config = tmp_path / "config.yaml"
    config.write_text(OLD.split("elastic:")[0].replace("rules: {include_shipped: false}",
                                                        "rules: {include_shipped: false, paths: [rules.d]}"))
    result = neo("check", "-c", config, "--offline")
    assert result.returncode == 78
    assert f"c.yaml:2:3: rule many: scope: scope cluster needs the config's elastic: section" in result.stderr
