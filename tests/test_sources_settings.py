"""File source settings and globs: typed from located YAML; rotated names matched."""

from __future__ import annotations

import os
from pathlib import Path

from auditd.config.located import Problems, parse_yaml
from auditd.sources.globs import PathMatcher
from auditd.sources.settings import MIB, FileSourceSettings, load_file_source


def load(text: str, file: str = "/etc/neo-auditd/config.yaml"):
    problems = Problems()
    doc = parse_yaml(text, file, problems)
    settings = load_file_source(doc.data, doc, (), problems)
    return settings, [str(p) for p in problems.items]


def test_defaults_and_paths_relative_to_the_config_file():
    settings, problems = load("name: crm\npaths: [logs/access*.log, /var/log/crm.log]\nformat: neo-crm\n")
    assert problems == []
    paths = (Path("/etc/neo-auditd/logs/access*.log"), Path("/var/log/crm.log"))
    assert settings == FileSourceSettings(name="crm", paths=paths, format="neo-crm")
    assert (settings.start_at, settings.poll_interval_s, settings.use_inotify) == ("beginning", 1.0, True)
    assert (settings.read_chunk_bytes, settings.fingerprint_bytes) == (MIB, 1024)


def test_unknown_keys_and_bad_values_are_located():
    _, problems = load("name: crm\npaths: [a.log]\nformat: x\nstart_at: middle\npoll_intervall_s: 2\n")
    assert any(p.startswith("/etc/neo-auditd/config.yaml:4:11: start_at: expected one of") for p in problems)
    assert any("5:1: poll_intervall_s: unknown key" in p for p in problems)


def test_cross_field_checks():
    _, problems = load("name: crm\npaths: []\nformat: x\npoll_interval_s: 0\n"
                       "fingerprint_bytes: 4096\nread_chunk_bytes: 1024\n")
    joined = "\n".join(problems)
    assert "paths: needs at least one path or glob" in joined
    assert "poll_interval_s: must be greater than 0" in joined
    assert "read_chunk_bytes: must be at least fingerprint_bytes" in joined


def scanned(root: Path, pattern: str, names: list[str]) -> list[str]:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x\n")
    return [os.path.relpath(p, root) for p in PathMatcher([root / pattern]).scan()]


def test_a_glob_also_matches_rotated_names_but_never_compressed_ones(tmp_path):
    matched = ["access.log", "access-api.log", "access.log.1", "access.log.12", "access.log-20261102",
               "access.log-20261102-1730"]
    others = ["access.log.1.gz", "access.log-20261102.xz", "access.log.old", "error.log", "access.logx"]
    assert scanned(tmp_path, "access*.log", matched + others) == sorted(matched)


def test_a_globstar_also_matches_files_in_the_directory_itself(tmp_path):
    # main: glob finds logs/a.log for logs/**/*.log, and a second matcher dropped it
    names = ["logs/a.log", "logs/x/b.log", "logs/x/y/c.log", "logs/a.log.1", "logs/x/b.txt"]
    assert scanned(tmp_path, "logs/**/*.log", names) == [
        "logs/a.log", "logs/a.log.1", "logs/x/b.log", "logs/x/y/c.log"]


def test_compressed_files_only_for_a_glob_that_names_them(tmp_path):
    names = ["ct/1.json.gz", "ct/2.json", "ct/3.json.GZ"]
    assert scanned(tmp_path, "ct/*.json.gz", names) == ["ct/1.json.gz"]
    assert scanned(tmp_path, "ct/*", names) == ["ct/2.json"]


def test_matches_is_what_the_last_scan_found(tmp_path):
    (tmp_path / "a.log").write_text("x\n")
    matcher = PathMatcher([tmp_path / "*.log"])
    assert not matcher.matches(str(tmp_path / "a.log"))  # no scan yet
    matcher.scan()
    assert matcher.matches(str(tmp_path / "a.log")) and not matcher.matches(str(tmp_path / "b.log"))


def test_a_compressed_glob_other_than_gzip_is_a_located_error():
    _, problems = load("name: crm\npaths: [logs/*.log, ct/*.json.xz]\nformat: x\n")
    assert problems == ["/etc/neo-auditd/config.yaml:2:21: paths[1]: .xz files cannot be read; gzip (.gz) can"]


def test_allow_dirs_are_typed_relative_and_checked():
    settings, problems = load("name: crm\npaths: [logs/*.log]\nformat: x\nallow_dirs: [../app/logs, /srv/app]\n")
    assert problems == [] and settings.allow_dirs == (Path("/etc/neo-auditd/../app/logs"), Path("/srv/app"))
    _, problems = load("name: crm\npaths: [logs/*.log]\nformat: x\nallow_dirs: [/, /srv/*/logs, 7]\n")
    assert problems == [
        "/etc/neo-auditd/config.yaml:4:35: allow_dirs[2]: expected Path, got int 7",
    ] or problems[0].endswith("allow_dirs[2]: expected Path, got int 7")
    _, problems = load("name: crm\npaths: [logs/*.log]\nformat: x\nallow_dirs: [/, /srv/*/logs]\n")
    assert problems == [
        "/etc/neo-auditd/config.yaml:4:14: allow_dirs[0]: the root would let a symlink reach any file; "
        "name the directories",
        "/etc/neo-auditd/config.yaml:4:17: allow_dirs[1]: a directory, not a glob",
    ]


def test_the_daemons_own_files_are_not_a_config_key():
    _, problems = load("name: crm\npaths: [logs/*.log]\nformat: x\nprotected: {}\n")
    assert len(problems) == 1 and "protected: unknown key" in problems[0]


def test_scan_finds_files_and_their_rotations(tmp_path):
    for name in ("access.log", "access.log.1", "access.log.2.gz", "other.log"):
        (tmp_path / name).write_text("x\n")
    matcher = PathMatcher([tmp_path / "access.log"])
    assert matcher.scan() == [str(tmp_path / "access.log"), str(tmp_path / "access.log.1")]


def test_watch_directories_stop_at_the_first_glob():
    matcher = PathMatcher([Path("/logs/app/access*.log"), Path("/srv/*/logs/**/*.log")])
    assert matcher.watch_directories() == [("/logs/app", False), ("/srv", True)]
