"""File source settings and globs: typed from located YAML; rotated names matched."""

from __future__ import annotations

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


def test_a_glob_also_matches_rotated_names_but_never_compressed_ones():
    matcher = PathMatcher([Path("/logs/access*.log")])
    for path in ("/logs/access.log", "/logs/access-api.log", "/logs/access.log.1", "/logs/access.log.12",
                 "/logs/access.log-20261102", "/logs/access.log-20261102-1730"):
        assert matcher.matches(path), path
    for path in ("/logs/access.log.1.gz", "/logs/access.log-20261102.xz", "/logs/access.log.old",
                 "/logs/error.log", "/logs/access.logx"):
        assert not matcher.matches(path), path


def test_scan_finds_files_and_their_rotations(tmp_path):
    for name in ("access.log", "access.log.1", "access.log.2.gz", "other.log"):
        (tmp_path / name).write_text("x\n")
    matcher = PathMatcher([tmp_path / "access.log"])
    assert matcher.scan() == [str(tmp_path / "access.log"), str(tmp_path / "access.log.1")]


def test_watch_directories_stop_at_the_first_glob():
    matcher = PathMatcher([Path("/logs/app/access*.log"), Path("/srv/*/logs/**/*.log")])
    assert matcher.watch_directories() == [("/logs/app", False), ("/srv", True)]
