"""A newcomer can learn every command from `--help` alone, and the docs name only
commands and files that exist.

Every subcommand (at every level) is listed with a line saying what it does and opens
its own `--help` with it; every option and positional argument says what it is for.
A command named in README.md, docs/ or examples/README.md must be one the parser
knows, and a file examples/README.md names must be there (or be one the demo writes).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from auditd.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", REPO / "examples" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_SKIPPED = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser, its one-line help in the parent's list) for every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                yield (*path, name), subparser, helps.get(name)
                yield from _commands(subparser, (*path, name))


COMMANDS = list(_commands(build_parser()))
IDS = [" ".join(path) for path, _, _ in COMMANDS]


def test_every_command_is_walked():
    assert {"run", "check", "replay", "status", "store backup", "incidents tier", "playbook run-due"} <= set(IDS)


@pytest.mark.parametrize(("path", "parser", "line"), COMMANDS, ids=IDS)
def test_every_option_and_argument_says_what_it_does(path, parser, line):
    assert line and len(line) >= 15, f"`neo-auditd {' '.join(path)}` has no line in its parent's list"
    assert parser.description, f"`neo-auditd {' '.join(path)} --help` does not say what the command does"
    missing = [action.option_strings[0] if action.option_strings else action.dest
               for action in parser._actions
               if not isinstance(action, _SKIPPED) and not (action.help or "").strip()]
    assert not missing, f"`neo-auditd {' '.join(path)}`: no help text for {', '.join(missing)}"


@pytest.mark.parametrize(("path", "parser", "line"), COMMANDS, ids=IDS)
def test_help_prints_what_the_command_and_its_options_do(path, parser, line, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert " ".join(parser.description.split()) in text
    for action in parser._actions:
        if not isinstance(action, _SKIPPED):
            assert " ".join(action.help.split()) in text


def test_the_installed_command_prints_help():
    """The console script itself, as a newcomer runs it first."""
    neo = REPO / ".venv" / "bin" / "neo-auditd"
    command = [str(neo)] if neo.exists() else [sys.executable, "-m", "auditd.cli"]  # NEO_VENV elsewhere
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "neo-auditd COMMAND --help" in done.stdout
    for path, _, _ in COMMANDS:
        if len(path) == 1:
            assert path[0] in done.stdout


# -- the docs name what exists --------------------------------------------------------------
_CODE = re.compile(r"```.*?```|`[^`\n]+`|^(?: {4}|\t)[^\n]+", re.S | re.M)
_INVOCATION = re.compile(r"(?<![\w/.-])neo-auditd[ \t]+([a-z][a-z|\\-]*)(?:[ \t]+([a-z][a-z|\\-]*))?")


def documented_commands() -> list[tuple[str, str, str | None]]:
    """(where, command, subcommand or None) for each `neo-auditd X [Y]` in code in the docs."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for block in _CODE.finditer(text):
            line = text[: block.start()].count("\n") + 1
            for match in _INVOCATION.finditer(block.group(0)):
                where = f"{document.relative_to(REPO)}:{line}"
                for command in match.group(1).replace("\\", "").split("|"):
                    found.append((where, command, match.group(2) and match.group(2).replace("\\", "")))
    return found


def test_every_command_the_docs_name_exists():
    tree: dict[str, set[str]] = {}
    for path, _, _ in COMMANDS:
        tree.setdefault(path[0], set())
        if len(path) == 2:
            tree[path[0]].add(path[1])
    documented = documented_commands()
    assert len(documented) > 30  # the walk found the docs' commands at all
    wrong = []
    for where, command, sub in documented:
        if command not in tree:
            wrong.append(f"{where}: neo-auditd {command} (no such command)")
        elif tree[command] and sub is not None:
            wrong += [f"{where}: neo-auditd {command} {s} (no such {command} action)"
                      for s in sub.split("|") if s not in tree[command]]
    assert not wrong, "\n".join(wrong)


# examples/README.md names these files that demo.sh, generate.py and the daemon write
_WRITTEN = {"access.log", "ground_truth.jsonl", "exports.jsonl", "examples/out/neo-auditd.log"}
_FILE = re.compile(r"^[\w./-]+\.(?:py|sh|yaml|yml|csv|md|jsonl|json|log)$|^[\w.-]+/[\w./-]*$")


def test_examples_readme_names_only_files_that_exist():
    text = (REPO / "examples" / "README.md").read_text(encoding="utf-8")
    named = {token for token in re.findall(r"`([^`\n]+)`", text) if _FILE.match(token)}
    assert {"generate.py", "score.py", "demo.sh", "docs/example-access-log.md"} <= named
    missing = [name for name in sorted(named)
               if name not in _WRITTEN and not name.startswith(("out/", "examples/out/"))
               and not (REPO / "examples" / name).exists() and not (REPO / name).exists()]
    assert not missing, f"examples/README.md names files that do not exist: {missing}"


def test_examples_readme_lists_every_file_of_the_example():
    text = (REPO / "examples" / "README.md").read_text(encoding="utf-8")
    tracked = subprocess.run(["git", "ls-files", "examples"], capture_output=True, text=True, cwd=REPO).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout: the example's files are not known")
    unnamed = [path for path in tracked if path != "examples/README.md"
               and f"`{Path(path).relative_to('examples')}`" not in text]
    assert not unnamed, f"examples/README.md does not say what these are: {unnamed}"


def test_examples_readme_names_only_rules_that_exist():
    """The scenario table's 'found by' column names shipped or example rules."""
    rules = set()
    for path in [*(REPO / "rules").glob("*.yaml"), *(REPO / "examples" / "rules.d").glob("*.yaml")]:
        rules |= set(re.findall(r"^- rule: (\S+)", path.read_text(encoding="utf-8"), re.M))
    text = (REPO / "examples" / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Planted scenarios"):]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) >= 14
    named = {token for row in rows for token in re.findall(r"`([a-z_]+)`", row.rsplit("|", 2)[1])}
    assert named and not named - rules, f"examples/README.md names rules that do not exist: {named - rules}"


def test_every_readme_section_the_messages_point_to_exists():
    """A refusal that says "see README, 'Backups and restore'" needs that section."""
    headings = set(re.findall(r"^#{2,4} (.+?)\s*$", (REPO / "README.md").read_text(encoding="utf-8"), re.M))
    pointed = set()
    for path in (REPO / "auditd").rglob("*.py"):
        pointed |= set(re.findall(r"README, '([^']+)'", path.read_text(encoding="utf-8")))
    assert "Backups and restore" in pointed
    assert pointed <= headings, f"README has no section {sorted(pointed - headings)}"
