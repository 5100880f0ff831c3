"""The operator's commands with hostile arguments: a clear error and its exit code, never
a traceback, and a read command never creates a store. Each case is one a hostile trial
of the command line found raising (OverflowError, sqlite3.OperationalError,
IsADirectoryError) or answering wrongly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from auditd.enrich.pseudonym import create_key_file


def neo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditd.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    create_key_file(tmp_path / "pseudonym.key")
    path = tmp_path / "config.yaml"
    path.write_text("state_dir: state\nsources: []\npseudonym:\n  key_file: pseudonym.key\n")
    return path


def ran(config: Path) -> Path:
    """A store, as a daemon that ran leaves it."""
    assert neo("suppress", "add", "-c", str(config), "--rule", "*", "--match", "user.id=E1", "--owner", "a",
               "--reason", "b", "--expires", "1d").returncode == 0
    return config.parent / "state" / "neo-auditd.db"


@pytest.mark.parametrize("args", [
    ["outbox", "show", "99999999999999999999999999"],
    ["outbox", "retry", "99999999999999999999999999"],
    ["suppress", "remove", "99999999999999999999999", "--by", "x"],
    ["outbox", "show", "0"],
])
def test_a_number_no_row_can_have_is_a_usage_error(config: Path, args) -> None:
    ran(config)
    result = neo(*args[:2], "-c", str(config), *args[2:])
    assert result.returncode == 2, result.stderr
    assert "no such number" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["incidents", "list"], ["outbox", "list"], ["suppress", "list"], ["register"]])
def test_a_read_command_on_a_missing_store_says_so_and_creates_nothing(config: Path, command) -> None:
    result = neo(*command, "-c", str(config))
    assert result.returncode == 1, result.stderr
    assert "no store there (has the daemon run with this config?" in result.stderr
    assert not (config.parent / "state").exists()


@pytest.mark.parametrize("command", [["incidents", "list"], ["outbox", "list"], ["suppress", "list"],
                                     ["store", "check"]])
def test_a_folder_where_the_store_should_be_is_named_with_what_to_do(config: Path, command) -> None:
    (config.parent / "state" / "neo-auditd.db").mkdir(parents=True)
    result = neo(*command, "-c", str(config))
    assert result.returncode == 65, result.stderr
    assert "neo-auditd.db is a folder, not a store" in result.stderr and "Traceback" not in result.stderr


def test_suppress_refuses_what_it_would_silently_misread(config: Path) -> None:
    ran(config)
    base = ["suppress", "add", "-c", str(config), "--rule", "*", "--owner", "a", "--reason", "b", "--expires", "1d"]
    twice = neo(*base, "--match", "user.id=E1", "--match", "user.id=E2")
    assert twice.returncode == 2 and "--match user.id given twice" in twice.stderr
    empty = neo(*base, "--match", "user.id=")
    assert empty.returncode == 2 and "expected FIELD=VALUE" in empty.stderr
    nobody = neo("suppress", "remove", "-c", str(config), "1", "--by", " ")
    assert nobody.returncode == 2 and "--by: say who removes it" in nobody.stderr
    for expires in ("9999-12-31", "9999-12-31T23:00:00-05:00"):
        far = neo(*base[:-2], "--expires", expires, "--match", "user.id=E3")
        assert far.returncode == 2 and "before the year 9999" in far.stderr and "Traceback" not in far.stderr
    near = neo(*base[:-2], "--expires", "9998-06-01", "--match", "user.id=E4")
    assert near.returncode == 0 and "until 9998-06-02T00:00" in near.stdout, near.stderr


@pytest.mark.parametrize("args, what", [
    (["incidents", "note", "INC-20261102-0001", "customer phone 13812345678"], "the note"),
    (["incidents", "ack", "INC-20261102-0001", "--why", "wrote to alice@example.com"], "--why"),
    (["suppress", "add", "--rule", "*", "--match", "user.id=E9", "--owner", "a", "--reason",
      "card 6222020200112233445", "--expires", "1d"], "--reason"),
])
def test_free_text_kept_for_good_takes_pseudonyms_only(config: Path, args, what) -> None:
    """A hostile trial: `incidents note` stored 'customer C10023 phone 13812345678' in the
    hash-chained timeline, where it can never be removed."""
    ran(config)
    result = neo(*args[:2], "-c", str(config), *args[2:])
    assert result.returncode == 2, result.stderr
    assert f"error: {what} holds what looks like personal information" in result.stderr
    listed = neo("suppress", "list", "-c", str(config), "--json")
    assert "6222020200112233445" not in listed.stdout


def test_retrying_a_message_that_is_not_failed_names_it(config: Path) -> None:
    ran(config)
    result = neo("outbox", "retry", "-c", str(config), "5", "7")
    assert result.returncode == 1
    assert "error: no failed message among 5, 7 (`outbox list --state failed` shows them)" in result.stderr


@pytest.mark.parametrize("args, what", [
    (["playbook", "done", "INC-20261102-0001", "triage", "--note", "rang 13812345678"], "--note"),
    (["playbook", "skip", "INC-20261102-0001", "triage", "--reason", "x" * 5000 + " alice@example.com"], "--reason"),
    (["report", "INC-20261102-0001", "--kind", "initial", "--set", "cause=id 530102199001011234"], "--set cause"),
])
def test_playbook_and_report_text_takes_pseudonyms_only_however_long(config: Path, args, what) -> None:
    """A review: `playbook done --note`, `skip --reason` and `report --set` went unchecked,
    and only the first 4,096 characters of a note were looked at."""
    ran(config)
    result = neo(*args[:2], "-c", str(config), *args[2:]) if args[0] == "playbook" else \
        neo(args[0], "-c", str(config), *args[1:])
    assert result.returncode == 2, result.stderr
    assert f"error: {what} holds what looks like personal information" in result.stderr


def test_escaped_output_keeps_the_daemons_json_log_lines_json() -> None:
    """A review: the daemon's log handler writes through the escaping stream, and an
    escape of the form \\x85 made a log line with a C1 character invalid JSON."""
    import io
    import json

    from auditd.cli.common import EscapedText

    raw = io.StringIO()
    line = json.dumps({"message": "refused", "file.path": "/var/log/app\x85\u202e.log\x1b[2J"}, ensure_ascii=False)
    EscapedText(raw).write(line + "\n")
    assert "\x85" not in raw.getvalue() and "\u202e" not in raw.getvalue()
    assert json.loads(raw.getvalue())["file.path"] == "/var/log/app\x85\u202e.log\x1b[2J"
