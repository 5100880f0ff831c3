"""The shipped systemd unit, sysusers.d and tmpfiles.d files, checked by systemd's own tools.

Where a tool is missing the test skips and says why, except under CI (CI set in the
environment), where a missing tool fails the run: these checks are never silently off.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD_DIR / "neo-auditd.service"
SYSUSERS = SYSTEMD_DIR / "neo-auditd.sysusers"
TMPFILES = SYSTEMD_DIR / "neo-auditd.tmpfiles"

# Where `pip install` as root puts console scripts on Debian and Ubuntu.
EXEC_BINARY = "/usr/local/bin/neo-auditd"
MAX_EXPOSURE = 2.0


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if path:
        return path
    reason = f"{name} is not installed (it comes with systemd)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this check")
    pytest.skip(reason)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    unit = UNIT
    if not os.access(EXEC_BINARY, os.X_OK):
        # verify also checks that ExecStart's binary exists, and neo-auditd is not
        # installed system-wide on a development machine. Check a copy whose only change
        # is that path, pointed at an executable that exists; everything else (every
        # directive, /bin/kill of ExecReload, the dependencies) is verified as shipped.
        unit = tmp_path / UNIT.name
        unit.write_text(UNIT.read_text().replace(f"ExecStart={EXEC_BINARY} ",
                                                 f"ExecStart={sys.executable} "))
        assert unit.read_text() != UNIT.read_text(), "ExecStart no longer names " + EXEC_BINARY
    result = _run(analyze, "verify", str(unit))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # warnings count as failures too


def test_unit_exposure_is_low(capsys: pytest.CaptureFixture[str]) -> None:
    analyze = _tool("systemd-analyze")
    result = _run(analyze, "security", "--offline=true", "--no-pager", str(UNIT))
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    with capsys.disabled():
        print(f"\nsystemd-analyze security exposure of {UNIT.name}: {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_unit_essentials() -> None:
    """What the daemon's code relies on; a reviewer should see these change on purpose."""
    directives = _directives(UNIT.read_text())
    expected = {
        "Type": ["notify"], "NotifyAccess": ["main"], "WatchdogSec": ["30"],
        "ExecStart": [f"{EXEC_BINARY} run -c /etc/neo-auditd/config.yaml"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"], "Restart": ["on-failure"],
        "RestartPreventExitStatus": ["65 78"], "User": ["neo-auditd"], "Group": ["neo-auditd"],
        "StateDirectory": ["neo-auditd"], "LogsDirectory": ["neo-auditd"],
        "ConfigurationDirectory": ["neo-auditd"], "CapabilityBoundingSet": [""],
        "UMask": ["0077"],
    }
    for key, values in expected.items():
        assert directives.get(key) == values, key
    assert "DynamicUser" not in directives


def test_exit_codes_that_a_restart_cannot_fix_match_the_code() -> None:
    from auditd.errors import EX_CONFIG
    from auditd.store.health import EX_DATAERR
    assert _directives(UNIT.read_text())["RestartPreventExitStatus"] == [f"{EX_DATAERR} {EX_CONFIG}"]


@pytest.mark.skipif(os.geteuid() != 0, reason="creating files owned by another user needs root")
def test_sysusers_and_tmpfiles_create_the_user_and_a_closed_config_directory(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers")
    tmpfiles = _tool("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)

    result = _run(sysusers, f"--root={root}", str(SYSUSERS))
    assert result.returncode == 0, result.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    user = passwd["neo-auditd"]
    assert int(user[2]) < 1000, "a system user"
    assert user[5] == "/var/lib/neo-auditd" and user[6].endswith("nologin")
    gid = int(groups["neo-auditd"][2])
    assert int(user[3]) == gid

    result = _run(tmpfiles, f"--root={root}", "--create", str(TMPFILES))
    assert result.returncode == 0, result.stderr
    config_dir = (root / "etc/neo-auditd").stat()
    assert stat.S_IMODE(config_dir.st_mode) == 0o750
    assert (config_dir.st_uid, config_dir.st_gid) == (0, gid)

    # An operator's config written with root's usual umask is closed up on the next run.
    config = root / "etc/neo-auditd/config.yaml"
    config.write_text("sources: []\n")
    config.chmod(0o644)
    result = _run(tmpfiles, f"--root={root}", "--create", str(TMPFILES))
    assert result.returncode == 0, result.stderr
    config_file = config.stat()
    assert stat.S_IMODE(config_file.st_mode) == 0o640
    assert (config_file.st_uid, config_file.st_gid) == (0, gid)
