"""The `working_days:` section of the config, and building the calendar from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from auditd.config.located import Doc, PathKey, Problems
from auditd.workdays.calendar import WorkingCalendar
from auditd.workdays.overrides import load_overrides


@dataclass(frozen=True, slots=True)
class WorkdaySettings:
    """``working_days: {override_file: working-days.yaml}``; without a file, years the
    package does not know fall back to "every day counts" with a warning."""

    override_file: Path | None = None


def load_calendar(settings: WorkdaySettings, problems: Problems, *, referrer: Doc | None = None,
                  key_path: PathKey = ("working_days", "override_file")) -> WorkingCalendar | None:
    """The calendar, or None (with located problems) when the override file is wrong."""
    if settings.override_file is None:
        return WorkingCalendar()
    overrides = load_overrides(settings.override_file, problems, referrer=referrer, key_path=key_path)
    return None if overrides is None else WorkingCalendar(overrides)
