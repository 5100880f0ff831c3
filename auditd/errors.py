"""One root exception for the project; configuration errors say where."""

from __future__ import annotations

from dataclasses import dataclass

EX_CONFIG = 78  # sysexits.h: configuration error


class NeoError(Exception):
    """Root of every error neo-auditd raises on purpose."""


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        if self.line <= 0:  # the file as a whole (missing, unreadable)
            return self.file
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config, rule, playbook or directory file."""

    location: Location | None
    key_path: str
    message: str

    def __str__(self) -> str:
        where = str(self.location) if self.location else "<config>"
        key = f" {self.key_path}:" if self.key_path else ""
        return f"{where}:{key} {self.message}"


# The message of a problem that only marks a value whose own problem is already in the
# list (a YAML scalar that could not be read); never shown.
ALREADY_REPORTED = "(already reported)"


class ConfigError(NeoError):
    """Every problem found while loading, reported together (exit code 78)."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = [p for p in problems if p.message != ALREADY_REPORTED]
        super().__init__("\n".join(str(p) for p in self.problems))


class DecodeError(NeoError):
    """A log record that cannot be decoded or mapped; it goes to quarantine."""


class StoreFormatError(NeoError):
    """The store was written by a newer neo-auditd, in a format this one cannot read."""
