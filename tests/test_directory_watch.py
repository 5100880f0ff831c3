"""Reloading the directory when its files change; a bad file keeps the old directory."""

from __future__ import annotations

import os
from pathlib import Path

from auditd.config.located import Problems
from auditd.directory import DirectoryWatcher, load_directory

HEAD = "regions: [{id: R-KM}]\nstores: [{id: S011, region: R-KM}]\nroles: [{id: clerk}]\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str, *, bump: int) -> None:
    path.write_text(text, encoding="utf-8")
    st = path.stat()  # same-second writes: move mtime on so the change shows on any filesystem
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def start(tmp_path: Path, employees: str = "employees: [{id: E1, name: a, roles: [clerk], store: S011}]\n"):
    path = tmp_path / "directory.yaml"
    write(path, HEAD + employees, bump=0)
    directory = load_directory(path, Problems())
    assert directory is not None
    clock = Clock()
    return path, clock, DirectoryWatcher(directory, path, min_interval_s=5, clock=clock)


def test_nothing_is_checked_before_the_interval_and_nothing_reloads_unchanged(tmp_path):
    path, clock, watcher = start(tmp_path)
    first = watcher.directory
    write(path, HEAD + "employees: [{id: E2, name: b, roles: [clerk], store: S011}]\n", bump=1)
    clock.now += 4
    assert watcher.poll() is None and watcher.directory is first  # not due yet
    clock.now += 1
    outcome = watcher.poll()
    assert outcome is not None and outcome.changed and outcome.problems == ()
    assert list(watcher.directory.employees) == ["E2"]
    clock.now += 5
    assert watcher.poll() is None  # unchanged since


def test_a_bad_new_file_keeps_the_old_directory_and_is_reported_once(tmp_path):
    path, clock, watcher = start(tmp_path)
    first = watcher.directory
    write(path, HEAD + "employees: [{id: E2, name: b, roles: [cashier], store: S011}]\n", bump=1)
    clock.now += 5
    outcome = watcher.poll()
    assert outcome is not None and not outcome.changed
    assert [p.message for p in outcome.problems] == ["unknown role 'cashier' (known: clerk)"]
    assert watcher.directory is first
    clock.now += 5
    assert watcher.poll() is None  # the same bad file is not read (and reported) again
    write(path, HEAD + "employees: [{id: E3, name: c, roles: [clerk], store: S011}]\n", bump=2)
    clock.now += 5
    assert watcher.poll().changed and list(watcher.directory.employees) == ["E3"]


def test_a_changed_csv_file_is_noticed(tmp_path):
    csv = tmp_path / "staff.csv"
    write(csv, "id,name,roles,store\nE20,x,clerk,S011\n", bump=0)
    path, clock, watcher = start(tmp_path, "employees: []\nemployees_csv: [staff.csv]\n")
    assert list(watcher.directory.employees) == ["E20"]
    write(csv, "id,name,roles,store\nE20,x,clerk,S011\nE21,y,clerk,S011\n", bump=1)
    clock.now += 5
    assert watcher.poll().changed and sorted(watcher.directory.employees) == ["E20", "E21"]


def test_a_deleted_file_keeps_the_old_directory(tmp_path):
    path, clock, watcher = start(tmp_path)
    first = watcher.directory
    path.unlink()
    clock.now += 5
    outcome = watcher.poll()
    assert not outcome.changed and "file not found" in outcome.problems[0].message
    assert watcher.directory is first


def test_reload_on_demand_uses_the_given_loader(tmp_path):
    path, clock, watcher = start(tmp_path)
    calls = []

    def loader(p, problems):
        calls.append(p)
        return load_directory(p, problems, categories=())

    watcher = DirectoryWatcher(watcher.directory, path, clock=clock, loader=loader)
    assert watcher.reload().changed and calls == [path]  # for SIGHUP: no interval, no stat


def test_a_loader_that_raises_is_a_rejected_file_and_the_old_directory_stays(tmp_path):
    path = tmp_path / "directory.yaml"
    path.write_text("roles: [{id: clerk}]\n")
    first = load_directory(path, Problems())

    def broken_loader(p, problems):
        raise RuntimeError("a bug in a loader")

    watcher = DirectoryWatcher(first, path, min_interval_s=0, loader=broken_loader)
    outcome = watcher.reload()
    assert not outcome.changed and watcher.directory is first
    assert [str(p) for p in outcome.problems] == [f"{path}: cannot load: RuntimeError: a bug in a loader"]


def test_in_the_background_a_changed_file_is_read_on_another_thread_and_swapped_at_a_later_poll(tmp_path):
    """The pipeline's thread polls; the load (half a second for 10,000 employees) runs
    apart, and the poll after it finished swaps the directory in (or keeps the old one
    when the new file is bad)."""
    import threading

    path, clock, _ = start(tmp_path)
    release, entered = threading.Event(), threading.Event()
    threads = []

    def slow_loader(p, problems):
        threads.append(threading.current_thread())
        entered.set()
        assert release.wait(10)
        return load_directory(p, problems)

    first = load_directory(path, Problems())
    watcher = DirectoryWatcher(first, path, min_interval_s=5, clock=clock, loader=slow_loader, background=True)
    write(path, HEAD + "employees: [{id: E2, name: b, roles: [clerk], store: S011}]\n", bump=1)
    clock.now += 5
    assert watcher.poll() is None  # the load started, and the poll did not wait for it
    assert entered.wait(10) and threads[0] is not threading.current_thread()
    clock.now += 5
    assert watcher.poll() is None and watcher.directory is first  # still loading: the old one in force
    release.set()
    threads[0].join(10)
    outcome = watcher.poll()
    assert outcome is not None and outcome.changed and list(watcher.directory.employees) == ["E2"]
    assert watcher.poll() is None  # nothing changed since

    write(path, HEAD + "employees: [{id: E3, name: c, roles: [cashier], store: S011}]\n", bump=2)
    clock.now += 5
    assert watcher.poll() is None
    threads[-1].join(10)
    outcome = watcher.poll()
    assert outcome is not None and not outcome.changed and outcome.problems
    assert list(watcher.directory.employees) == ["E2"]


def test_loaded_apart_the_directory_comes_back_whole_with_its_packed_form_and_its_problems(tmp_path):
    """The daemon's way: the files parsed in a spawned child, the result unpacked here
    (the same directory as a load here gives), and a bad file's located problems back."""
    from functools import partial

    from auditd.directory.packed import load_apart, unpack

    path, clock, _ = start(tmp_path)
    first = load_directory(path, Problems())
    watcher = DirectoryWatcher(first, path, min_interval_s=5, clock=clock, background=True,
                               load_apart=partial(load_apart, nice=5))
    write(path, HEAD + "employees: [{id: E2, name: b, roles: [clerk], store: S011}]\n", bump=1)
    clock.now += 5
    assert watcher.poll() is None
    watcher._loading.join(60)
    outcome = watcher.poll()
    assert outcome is not None and outcome.changed
    assert watcher.directory == load_directory(path, Problems())
    assert unpack(watcher.packed) == watcher.directory

    write(path, HEAD + "employees: [{id: E3, name: c, roles: [cashier], store: S011}]\n", bump=2)
    clock.now += 5
    assert watcher.poll() is None
    watcher._loading.join(60)
    outcome = watcher.poll()
    assert outcome is not None and not outcome.changed
    assert [p.message for p in outcome.problems] == ["unknown role 'cashier' (known: clerk)"]
    assert outcome.problems[0].location.file == str(path)
    assert list(watcher.directory.employees) == ["E2"]


# -- a SIGHUP's reload keeps the directory in force while its files are unchanged -------------

def test_a_reload_keeps_the_directory_in_force_until_one_of_its_files_changes(tmp_path):
    """`directory.reuse`: the same object while the YAML and its CSV files are as they
    were read (no parse); read again once either changes, or for other categories."""
    from auditd.directory.reuse import reusing

    (tmp_path / "staff.csv").write_text("id,name,roles,store\nE20,t,clerk,S011\n", encoding="utf-8")
    path, _, _ = start(tmp_path, "employees: []\nemployees_csv: [staff.csv]\n")
    in_force = load_directory(path, Problems(), categories={"contact"})
    read_again: list[Path] = []

    def load_changed(p, problems, **kwargs):
        read_again.append(Path(p))
        return load_directory(p, problems, **kwargs)

    def load(categories=("contact",)):
        return reusing(in_force, {"contact"}, load_changed=load_changed)(path, Problems(), categories=categories)

    assert load() is in_force and read_again == []
    assert load(categories=("contact", "order")) is not in_force  # grants are checked against other categories
    assert reusing(in_force, {"contact"}, load_changed=load_changed)(
        tmp_path / "other.yaml", Problems(), categories=("contact",)) is None  # another file: read (missing)

    os.utime(tmp_path / "staff.csv", ns=(0, 10**18))  # the CSV file changed
    again = load()
    assert again is not in_force and again == load_directory(path, Problems(), categories={"contact"})
    assert len(read_again) == 3


def test_a_reload_with_no_directory_in_force_reads_the_file(tmp_path):
    from auditd.directory.reuse import reusing

    path, _, _ = start(tmp_path)
    problems = Problems()
    fresh = reusing(None, None)(path, problems)
    assert fresh is not None and list(fresh.employees) == ["E1"] and not problems


def test_a_rewrite_of_the_same_size_with_its_mtime_set_back_is_noticed(tmp_path):
    """Size, mtime and inode alone missed it: `touch -r` (or a tool that keeps times)
    after an in-place edit of the same length left the old directory in force."""
    path, clock, watcher = start(tmp_path)
    before = path.stat()
    with open(path, "r+b") as fh:  # E1 -> E9: same length, same inode
        data = fh.read()
        fh.seek(0)
        fh.write(data.replace(b"id: E1", b"id: E9"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    clock.now += 5
    outcome = watcher.poll()
    assert outcome is not None and outcome.changed and list(watcher.directory.employees) == ["E9"]
