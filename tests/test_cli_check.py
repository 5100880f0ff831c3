"""`neo-auditd check` as a user runs it: exit 78 with file:line and key path for each error class."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from auditd.enrich.pseudonym import create_key_file

REPO = Path(__file__).resolve().parents[1]


def neo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditd.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A minimal valid deployment: config, key, one operator rule file."""
    create_key_file(tmp_path / "pseudonym.key")
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "local.yaml").write_text(
        "- rule: local_export\n"
        "  desc: any export\n"
        "  condition: event.action = export\n"
        "  severity: low\n"
        "  tags: [incubating]\n"
        "  samples:\n"
        "    match: [{'@timestamp': '2026-11-02T10:00:00+08:00', event.action: export}]\n"
        "    no_match: [{'@timestamp': '2026-11-02T10:00:00+08:00', event.action: read}]\n"
    )
    write_config(tmp_path)
    return tmp_path


def write_config(folder: Path, *, extra: str = "", source: str = "    format: neo-crm\n") -> Path:
    config = folder / "config.yaml"
    config.write_text(
        "state_dir: state\n"
        "sources:\n"
        "  - name: crm\n"
        "    paths: [logs/access.log]\n"
        + source
        + "pseudonym:\n"
        "  key_file: pseudonym.key\n"
        "rules:\n"
        "  paths: [rules.d]\n"
        + extra
    )
    return config


def check(folder: Path) -> subprocess.CompletedProcess:
    return neo("check", "-c", str(folder / "config.yaml"))


def test_valid_deployment_passes(deployment: Path):
    result = check(deployment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")


def test_unknown_key(deployment: Path):
    write_config(deployment, extra="store:\n  synchronus: FULL\n")
    result = check(deployment)
    assert result.returncode == 78
    assert f"{deployment / 'config.yaml'}:11:3: store.synchronus: unknown key 'synchronus'" in result.stderr


def test_wrong_type(deployment: Path):
    write_config(deployment, extra="pipeline:\n  batch_records: lots\n")
    result = check(deployment)
    assert result.returncode == 78
    assert f"{deployment / 'config.yaml'}:11:18: pipeline.batch_records: expected an integer" in result.stderr


def test_missing_file(deployment: Path):
    (deployment / "pseudonym.key").unlink()
    result = check(deployment)
    assert result.returncode == 78
    assert f"{deployment / 'config.yaml'}:7:13: pseudonym.key_file:" in result.stderr
    assert "not found" in result.stderr


def test_bad_regex_in_a_rule(deployment: Path):
    (deployment / "rules.d" / "bad.yaml").write_text(
        "- rule: bad_regex\n  desc: d\n  condition: user.id regex '([a-z'\n  severity: low\n  tags: [sandbox]\n"
    )
    result = check(deployment)
    assert result.returncode == 78
    assert f"{deployment / 'rules.d' / 'bad.yaml'}:3:" in result.stderr
    assert "[0].condition" in result.stderr and "regex" in result.stderr


def test_bad_regex_in_a_format(deployment: Path):
    write_config(deployment, source="    format: app\n",
                 extra="formats:\n  app:\n    kind: regex\n    options:\n      pattern: '(?P<user>[a-z'\n"
                       "    fields:\n      '@timestamp': {path: ts}\n      event.action: {value: read}\n")
    result = check(deployment)
    assert result.returncode == 78
    assert f"{deployment / 'config.yaml'}:14:16: formats.app.options.pattern:" in result.stderr, result.stderr


@pytest.mark.parametrize("condition, name", [
    ("event.action in unknown_actions", "unknown_actions"),
    ("is_unknown_macro and event.action = read", "is_unknown_macro"),
])
def test_unknown_list_or_macro(deployment: Path, condition: str, name: str):
    (deployment / "rules.d" / "bad.yaml").write_text(
        f"- rule: refers_to_nothing\n  desc: d\n  condition: {condition}\n  severity: low\n  tags: [sandbox]\n"
    )
    result = check(deployment)
    assert result.returncode == 78
    assert f"{deployment / 'rules.d' / 'bad.yaml'}:3:" in result.stderr
    assert "[0].condition" in result.stderr and name in result.stderr


def test_duplicate_rule_id(deployment: Path):
    (deployment / "rules.d" / "dup.yaml").write_text(
        "- rule: local_export\n  desc: again\n  condition: event.action = export\n  severity: low\n"
        "  tags: [sandbox]\n"
    )
    result = check(deployment)
    assert result.returncode == 78
    assert f"{deployment / 'rules.d' / 'dup.yaml'}:1:" in result.stderr
    assert "local_export" in result.stderr and "duplicate" in result.stderr.lower()


def test_all_problems_reported_together(deployment: Path):
    write_config(deployment, extra="store:\n  synchronus: FULL\npipeline:\n  batch_records: lots\n")
    (deployment / "rules.d" / "bad.yaml").write_text("- rule: r\n  desc: d\n  condition: nonsense.field = 1\n")
    result = check(deployment)
    assert result.returncode == 78
    assert "2 problem(s) found" in result.stderr  # the config's own: files it names wait for a valid config
    (deployment / "config.yaml").write_text(write_config(deployment).read_text())
    (deployment / "pseudonym.key").unlink()
    result = check(deployment)
    assert result.returncode == 78
    assert "pseudonym.key_file" in result.stderr and "bad.yaml" in result.stderr  # key and rules together


def test_check_json(deployment: Path):
    write_config(deployment, extra="store:\n  synchronus: FULL\n")
    result = neo("check", "-c", str(deployment / "config.yaml"), "--json")
    assert result.returncode == 78
    assert '"ok": false' in result.stdout and "synchronus" in result.stdout


def test_an_elasticsearch_host_no_request_can_be_made_to_is_located(deployment: Path):
    """The config fuzzer's find: `https://1270..0.1` passed the scheme check and the
    template preflight raised urllib3's LocationParseError out of `check`."""
    write_config(deployment, extra="elastic:\n  hosts: ['https://1270..0.1:9200']\n")
    result = check(deployment)
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"config\.yaml:\d+:\d+: elastic\.hosts: not a usable URL", result.stderr), result.stderr


@pytest.mark.parametrize("key, extra", [
    ("entitlement.assignments.csv.path", "entitlement:\n  assignments: {csv: {path: %s}}\n"),
    ("entitlement.assignments.sqlite.path", "entitlement:\n  assignments: {sqlite: {path: %s}}\n"),
    ("entitlement.departed.account_feed", "entitlement:\n  departed: {account_feed: %s}\n"),
])
def test_a_fifo_named_as_an_entitlement_file_is_refused_not_waited_on(deployment: Path, key: str, extra: str):
    """Read later on the pipeline's thread (assignments) or by the departed sweep: a FIFO
    there would hang them; refused at `check` (and so at `run` and on SIGHUP)."""
    import os

    fifo = deployment / "feed.fifo"
    os.mkfifo(fifo)
    write_config(deployment, extra=extra % fifo)
    result = neo("check", "-c", str(deployment / "config.yaml"), "--offline")
    assert result.returncode == 78, result.stdout + result.stderr
    assert re.search(rf"config\.yaml:\d+:\d+: {re.escape(key)}: cannot read .*feed\.fifo: not a regular file",
                     result.stderr), result.stderr
    (deployment / "config.yaml").write_text((deployment / "config.yaml").read_text().replace(str(fifo),
                                                                                            str(deployment / "later.csv")))
    assert neo("check", "-c", str(deployment / "config.yaml"), "--offline").returncode == 0  # not there yet: as before
