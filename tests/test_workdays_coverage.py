"""Years ahead that no working-day calendar knows: `check` warns, `status` shows them, a
metric says so per year, and the fallback keeps every deadline on or before the true one."""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from auditd.settings import Settings
from auditd.enrich.pseudonym import create_key_file
from auditd.ops.metrics import Metrics
from auditd.ops.status import calendar_status, collect_status
from auditd.ops.status_text import render_status
from auditd.store.sqlite import Store
from auditd.workdays import (
    OVERRIDE,
    PACKAGE,
    WorkdaySettings,
    WorkingCalendar,
    YearCoverage,
    YearOverride,
    coverage,
    coverage_warning,
    uncovered,
    years_ahead,
)

D = dt.date
SHANGHAI_2031 = dt.datetime(2031, 3, 1, 2, 0, tzinfo=dt.timezone.utc)  # no package knows 2031 yet
OVERRIDES_2031_2032 = """\
years:
  2031:
    holidays: [2031-01-01]
  2032:
    holidays: [2032-01-01]
"""


def only_years(*known: int):
    """A package lookup that knows only these years (as chinese-calendar knows a few)."""
    def is_workday(day: dt.date) -> bool:
        if day.year not in known:
            raise NotImplementedError(f"no available data for year {day.year}")
        return day.weekday() < 5
    return is_workday


@pytest.mark.parametrize("today, years", [
    (D(2026, 1, 1), [2026]),
    (D(2026, 1, 2), [2026, 2027]),
    (D(2026, 12, 4), [2026, 2027]),
    (D(2028, 2, 29), [2028, 2029]),
])
def test_years_ahead_are_the_ones_the_next_12_months_touch(today: dt.date, years: list[int]) -> None:
    assert list(years_ahead(today)) == years


def test_a_calendar_with_limited_years_names_the_missing_ones(caplog: pytest.LogCaptureFixture) -> None:
    calendar = WorkingCalendar({2028: YearOverride(2028)}, package=only_years(2026))
    with caplog.at_level(logging.WARNING):
        assert coverage(calendar, D(2026, 12, 4)) == [YearCoverage(year=2026, source=PACKAGE),
                                                      YearCoverage(year=2027, source=None)]
        assert coverage(calendar, D(2027, 6, 1)) == [YearCoverage(year=2027, source=None),
                                                     YearCoverage(year=2028, source=OVERRIDE)]
    assert not caplog.records and calendar.fallback_years == ()  # looking ahead builds and logs nothing

    text = coverage_warning([2027], Path("/etc/neo-auditd/working-days.yaml"))
    assert text.startswith("no working-day calendar for 2027, within the next 12 months: chinese-calendar ")
    assert "the override file /etc/neo-auditd/working-days.yaml does not list it" in text
    assert "early, never late" in text
    assert coverage_warning([], None) is None
    assert "2031, 2032" in coverage_warning([2031, 2032], None) and "no override file" in coverage_warning([2031], None)


def test_in_2031_the_real_package_knows_neither_year_ahead() -> None:
    calendar = WorkingCalendar()
    assert uncovered(coverage(calendar, D(2031, 3, 1))) == [2031, 2032]


def test_the_fallback_deadline_is_never_later_than_the_true_one() -> None:
    true = WorkingCalendar()  # chinese-calendar knows 2026
    blind = WorkingCalendar(package=only_years())  # knows nothing: every day counts
    for start in (D(2026, 1, 1) + dt.timedelta(days=n) for n in range(365)):
        for n in (1, 3, 15):
            assert blind.add_working_days(start, n) <= true.add_working_days(start, n), (start, n)
        later = start + dt.timedelta(days=20)
        assert blind.working_days_between(start, later) >= true.working_days_between(start, later), start


def test_a_deadline_in_2031_counts_calendar_days() -> None:
    calendar = WorkingCalendar()
    assert calendar.add_working_days(D(2031, 9, 30), 3) == D(2031, 10, 3)  # 1-3 October would be holidays
    assert calendar.fallback_years == (2031,)


# -- status and metrics -------------------------------------------------------------------
def settings(tmp_path: Path, override_file: Path | None = None) -> Settings:
    return Settings(state_dir=tmp_path, sources=[], pseudonym=None, working_days=WorkdaySettings(override_file))


def test_status_shows_the_years_ahead_and_which_are_not_covered(tmp_path: Path) -> None:
    Store(tmp_path / "neo-auditd.db").open().close()
    status = collect_status(tmp_path / "neo-auditd.db", settings(tmp_path), SHANGHAI_2031)
    assert status.working_days.years == [YearCoverage(year=2031, source=None), YearCoverage(year=2032, source=None)]
    text = render_status(status)
    assert "working days: 2031 NOT COVERED, 2032 NOT COVERED" in text
    assert "deadlines in 2031, 2032 count every calendar day as a working day" in text

    (tmp_path / "wd.yaml").write_text(OVERRIDES_2031_2032)
    covered = calendar_status(settings(tmp_path, tmp_path / "wd.yaml"), SHANGHAI_2031)
    assert uncovered(covered.years) == [] and {y.source for y in covered.years} == {OVERRIDE}
    assert "working days: 2031 override, 2032 override" in render_status(
        collect_status(tmp_path / "neo-auditd.db", settings(tmp_path, tmp_path / "wd.yaml"), SHANGHAI_2031))

    (tmp_path / "wd.yaml").write_text("years:\n  2031:\n    holiday: []\n")
    broken = calendar_status(settings(tmp_path, tmp_path / "wd.yaml"), SHANGHAI_2031)
    assert broken.years == [] and "unknown key 'holiday'" in broken.problem


def test_a_metric_per_year_says_whether_it_is_covered(tmp_path: Path) -> None:
    Store(tmp_path / "neo-auditd.db").open().close()
    calendar = WorkingCalendar({2032: YearOverride(2032)})
    metrics = Metrics(tmp_path / "neo-auditd.db", clock=SHANGHAI_2031.timestamp)
    metrics.watch_calendar(lambda: calendar, settings(tmp_path).zone)
    calendar.is_workday(D(2035, 5, 1))  # an event from a skewed clock: answered by the fallback

    text = generate_latest(metrics.registry).decode()
    got = {(s.labels["year"], s.labels["source"]): s.value for family in text_string_to_metric_families(text)
           for s in family.samples if s.name == "neo_auditd_working_days_year_covered"}
    assert got == {("2031", "none"): 0, ("2032", "override"): 1, ("2035", "none"): 0}


# -- check ------------------------------------------------------------------------------------
def check(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditd.cli", "check", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=120)


def test_check_warns_about_years_ahead_that_no_calendar_knows(tmp_path: Path) -> None:
    create_key_file(tmp_path / "pseudonym.key")
    config = tmp_path / "config.yaml"
    config.write_text("state_dir: state\nsources: []\npseudonym:\n  key_file: pseudonym.key\n"
                      "working_days:\n  override_file: wd.yaml\n")
    (tmp_path / "wd.yaml").write_text("years:\n  2031:\n    holidays: [2031-01-01]\n")

    result = check(config, "--as-of", "2031-03-01")
    assert result.returncode == 0, result.stderr  # a warning, not an error: the fallback is safe
    assert result.stdout.startswith("ok: ")
    assert result.stderr.startswith(
        f"warning: {config}:6:18: working_days.override_file: no working-day calendar for 2032, within the next "
        f"12 months: chinese-calendar ")
    assert f"the override file {tmp_path / 'wd.yaml'} does not list it" in result.stderr

    as_json = json.loads(check(config, "--as-of", "2031-03-01", "--json").stdout)
    assert as_json["ok"] and len(as_json["warnings"]) == 1 and "2032" in as_json["warnings"][0]

    assert "warning" not in check(config, "--as-of", "2031-01-01").stderr  # 2031 alone: in the file

    bad = check(config, "--as-of", "soon")
    assert bad.returncode == 2 and "expected a date such as" in bad.stderr
