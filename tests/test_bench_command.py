"""The one benchmark command (benchmarks/run.py) runs end to end on a small input.

CI runs it once so that it cannot rot between the quiet-machine runs that give the
figures; it asserts that every figure is there, never what it is (speed is for
benchmarks, not tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_command_prints_every_figure(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--lines", "1500", "--rounds", "1",
         "--latency-seconds", "2", "--rate", "2000", "--workdir", str(tmp_path), "--json"],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    eps = result["events_per_second"]
    assert set(eps["neo_auditd_1_worker"]) == {"min", "median", "max"}
    assert "floor" in eps and "1_worker_over_floor" in result["ratios"]
    # fail2ban-regex is Debian's: where it is missing, the output says so instead
    assert "fail2ban_regex" in eps or any("fail2ban" in n for n in result["notes"])
    assert result["peak_rss_mib"]["1_worker"] > 0
    assert result["alerts"] > 0  # the shipped rules ran on the example log
    latency = result["latency"]
    assert latency["alerting_lines"] > 0 and "p99" in latency["latency_ms"]
    assert latency["alert_latency_ms"]["alerts"] == latency["alerting_lines"]  # one alert per alerting line


def test_floor_is_frozen():
    """The floor takes nothing from the code it measures."""
    source = (REPO / "benchmarks" / "floor.py").read_text()
    imports = [line for line in source.splitlines() if line.lstrip().startswith(("import ", "from "))]
    assert not [line for line in imports if "auditd" in line], imports
