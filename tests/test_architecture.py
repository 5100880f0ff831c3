"""The map in docs/architecture.md, enforced: a package imports only the packages
below it (earlier stages, the store, the ground floor), never one above."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "auditd"
MAP = REPO / "docs" / "architecture.md"


def layers() -> list[str]:
    """The packages in the map's order, read from its `## Layers` list."""
    text = MAP.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\d+\.\s+`([a-z_]+)`", section, flags=re.MULTILINE)


def _package_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return rel[0].removesuffix(".py")


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, auditd package) of every import, outside `if TYPE_CHECKING:` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module.startswith("auditd.") else (
                [f"auditd.{a.name}" for a in node.names] if node.module == "auditd" else [])
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("auditd.")]
        found.extend((node.lineno, name.split(".")[1]) for name in names)
    return found


def test_the_map_names_every_package_once():
    order = layers()
    assert len(order) == len(set(order))
    present = {_package_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert present - set(order) == set(), "packages missing from docs/architecture.md"


def test_no_import_points_up_the_map():
    order = {name: i for i, name in enumerate(layers())}
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _package_of(path)
        if source == "__init__":
            continue
        for line, target in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if target != source and target in order and order[target] > order[source]:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {source} imports {target}, which is above it")
    assert wrong == []


def test_the_check_sees_a_backward_import():
    tree = ast.parse("from auditd.service import serve\nif TYPE_CHECKING:\n    from auditd.cli import main\n")
    assert _imports(tree) == [(1, "service")]


def test_the_store_s_write_transactions_are_all_store_sqlite_immediate():
    """One transaction helper (it rolls back only a transaction still open, and a failed
    COMMIT too); suppressions wrote their own BEGIN IMMEDIATE / ROLLBACK, which hid a
    full disk's error behind 'no transaction is active'. The store's migrations, and the
    cluster rules' private in-memory stores, keep their own."""
    own = [path.relative_to(REPO) for path in PACKAGE.rglob("*.py")
           if re.search(r"""execute\(\s*["']BEGIN IMMEDIATE""", path.read_text(encoding="utf-8"))
           and path.relative_to(PACKAGE).parts[0] != "store"]
    assert own == []
