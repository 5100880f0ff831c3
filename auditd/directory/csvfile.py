"""Employees from a CSV export of the HR system, located cell by cell.

The header names the columns with the same keys as the YAML employee entries (``id,
name, roles, store, region, shift, status, hire_date, departure, account_enabled,
account_disabled_at``). An empty cell is an absent key. ``roles`` holds
``role@from..until`` items separated by ``;`` (either bound may be empty, and a role
without ``@`` is held throughout), e.g. ``store_clerk@2024-03-01..2026-10-27;
store_manager@2026-10-28..``. Each row becomes a small located document, so a bad cell
is reported as ``employees.csv:14:23: employees[12].hire_date: …``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from auditd.config.located import Doc, PathKey, Problems, read_config_text
from auditd.errors import ConfigProblem, Location

COLUMNS = (
    "id", "name", "roles", "store", "region", "shift", "status", "hire_date", "departure",
    "account_enabled", "account_disabled_at",
)
_BOOLS = {"true": True, "yes": True, "y": True, "1": True, "false": False, "no": False, "n": False, "0": False}


def load_employee_csv(
    path: Path, problems: Problems, *, referrer: Doc | None = None, key_path: PathKey = ()
) -> list[tuple[Doc, PathKey, dict[str, Any]]]:
    """Rows as (document, key path, plain mapping) ready for `convert(EmployeeSpec, …)`."""
    try:
        text = read_config_text(Path(path))  # no FIFO, no giant file; a BOM from Excel is dropped
    except FileNotFoundError:
        problems.add(referrer, key_path, f"file not found: {path}")
        return []
    except UnicodeDecodeError as exc:
        problems.add(referrer, key_path, f"{path} is not UTF-8 text (bad byte at offset {exc.start})")
        return []
    except (OSError, ValueError) as exc:
        problems.add(referrer, key_path, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
        return []
    doc = Doc(file=str(path), data={"employees": []})
    lines = text.splitlines(keepends=True)
    reader = csv.reader(lines)
    out: list[tuple[Doc, PathKey, dict[str, Any]]] = []
    try:
        header = next(reader, None)
        if header is None:
            return []
        columns = _header(doc, [h.strip() for h in header], lines[0], problems)
        if columns is None:
            return []
        first_line = reader.line_num + 1
        for record in reader:
            starts = _field_columns(lines[first_line - 1]) if first_line <= len(lines) else []
            if any(cell.strip() for cell in record):
                path_key: PathKey = ("employees", len(doc.data["employees"]))
                row = _row(doc, path_key, columns, record, first_line, starts, problems)
                doc.data["employees"].append(row)
                out.append((doc, path_key, row))
            first_line = reader.line_num + 1
    except csv.Error as exc:  # a NUL byte, a field over the csv module's size limit
        problems.items.append(ConfigProblem(Location(str(path), reader.line_num or 1, 1), "", f"invalid CSV: {exc}"))
    return out


def _header(doc: Doc, names: list[str], raw: str, problems: Problems) -> list[str | None] | None:
    starts = _field_columns(raw)
    columns: list[str | None] = []
    for i, name in enumerate(names):
        if name in COLUMNS:
            columns.append(name)
            continue
        doc.marks[("columns", i)] = Location(doc.file, 1, starts[i] if i < len(starts) else 1)
        problems.add(doc, ("columns", i), f"unknown column {name!r} (valid columns: {', '.join(COLUMNS)})")
        columns.append(None)
    for required in ("id", "name"):
        if required not in columns:
            problems.add(doc, (), f"missing column {required!r}")
            return None
    return columns


def _row(doc: Doc, path: PathKey, columns: list[str | None], record: list[str], line: int,
         starts: list[int], problems: Problems) -> dict[str, Any]:
    doc.marks[path] = Location(doc.file, line, 1)
    row: dict[str, Any] = {}
    for i, (column, cell) in enumerate(zip(columns, record)):
        cell = cell.strip()
        if column is None or not cell:
            continue
        doc.marks[path + (column,)] = Location(doc.file, line, starts[i] if i < len(starts) else 1)
        if column == "roles":
            row[column] = _roles(doc, path + (column,), cell, problems)
        elif column == "account_enabled":
            row[column] = _BOOLS.get(cell.lower(), cell)  # anything else fails conversion, located
        else:
            row[column] = cell
    if len(record) > len(columns):
        problems.add(doc, path, f"{len(record)} cells but {len(columns)} columns")
    return row


def _roles(doc: Doc, path: PathKey, cell: str, problems: Problems) -> list[dict[str, str]]:
    out = []
    for item in (part.strip() for part in cell.split(";")):
        if not item:
            continue
        role, at, span = item.partition("@")
        entry = {"role": role.strip()}
        if at:
            start, dots, end = span.partition("..")
            if not dots:
                problems.add(doc, path + (len(out),), f"expected 'role@from..until', got {item!r}")
            if start.strip():
                entry["from"] = start.strip()
            if end.strip():
                entry["until"] = end.strip()
        out.append(entry)
    return out


def _field_columns(line: str) -> list[int]:
    """1-based start column of each cell of one physical CSV line (quotes respected)."""
    starts = [1]
    quoted = False
    for i, ch in enumerate(line.rstrip("\r\n")):
        if ch == '"':
            quoted = not quoted  # a doubled "" toggles twice: no net change
        elif ch == "," and not quoted:
            starts.append(i + 2)
    return starts
