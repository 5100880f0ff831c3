"""A directory loaded from YAML text, for the tests that need one."""

from __future__ import annotations

from auditd.config.located import Problems
from auditd.directory import Directory, load_directory


def directory_from(tmp_path_factory, text: str) -> Directory:
    path = tmp_path_factory.mktemp("dir") / "directory.yaml"
    path.write_text(text, encoding="utf-8")
    problems = Problems()
    directory = load_directory(path, problems)
    assert problems.items == []
    return directory
