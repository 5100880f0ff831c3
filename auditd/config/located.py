"""YAML documents that remember where each value came from.

Every error about a config, rule, playbook or directory file must name file, line,
column and key path, so YAML is composed into nodes (with the C loader when
available) and each value's position is kept beside the plain data, keyed by its path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from auditd.errors import ConfigProblem, Location

try:  # the C loader is several times faster on large rule and directory files
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

PathKey = tuple[str | int, ...]


def format_key_path(path: PathKey) -> str:
    """('rules', 2, 'condition') -> 'rules[2].condition'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class Doc:
    """A parsed YAML file: plain data plus the location of every value."""

    file: str
    data: Any
    marks: dict[PathKey, Location] = field(default_factory=dict)  # where each value starts
    key_marks: dict[PathKey, Location] = field(default_factory=dict)  # where each mapping key is

    @property
    def folder(self) -> Path:
        return Path(self.file).parent

    def where(self, path: PathKey, *, at_key: bool = False) -> Location | None:
        """The location of the value at path (or of its key), or of its nearest located ancestor."""
        if at_key and path in self.key_marks:
            return self.key_marks[path]
        while True:
            loc = self.marks.get(path)
            if loc is not None or not path:
                return loc or Location(self.file, 1, 1)
            path = path[:-1]

    def problem(self, path: PathKey, message: str, *, at_key: bool = False) -> ConfigProblem:
        return ConfigProblem(self.where(path, at_key=at_key), format_key_path(path), message)


class Problems:
    """Collects every problem found while loading, so all are reported at once."""

    def __init__(self) -> None:
        self.items: list[ConfigProblem] = []

    def add(self, doc: Doc | None, path: PathKey, message: str, *, at_key: bool = False) -> None:
        if doc is None:
            self.items.append(ConfigProblem(None, format_key_path(path), message))
        else:
            self.items.append(doc.problem(path, message, at_key=at_key))

    def extend(self, other: "Problems") -> None:
        self.items.extend(other.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        from auditd.errors import ConfigError

        if self.items:
            raise ConfigError(self.items)


def _loc(file: str, node: yaml.Node) -> Location:
    mark = node.start_mark
    return Location(file, mark.line + 1, mark.column + 1)


def parse_yaml(text: str, file: str, problems: Problems) -> Doc | None:
    """Parse YAML text; a syntax error becomes a located problem and None."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        problems.items.append(ConfigProblem(loc, "", f"invalid YAML: {exc.problem or exc}"))
        return None
    except yaml.YAMLError as exc:
        problems.items.append(ConfigProblem(Location(file, 1, 1), "", f"invalid YAML: {exc}"))
        return None
    finally:
        loader.dispose()
    doc = Doc(file=file, data=None)
    if root is None:
        doc.data = {}
        return doc
    doc.data = _build(root, (), doc, loader, problems)
    return doc


def _build(node: yaml.Node, path: PathKey, doc: Doc, loader: Any, problems: Problems) -> Any:
    doc.marks[path] = _loc(doc.file, node)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                problems.items.append(
                    ConfigProblem(_loc(doc.file, key_node), format_key_path(path), "keys must be scalars")
                )
                continue
            key = str(key)
            if key in out:
                problems.items.append(
                    ConfigProblem(_loc(doc.file, key_node), format_key_path(path + (key,)), "duplicate key")
                )
                continue
            out[key] = _build(value_node, path + (key,), doc, loader, problems)
            doc.key_marks[path + (key,)] = _loc(doc.file, key_node)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), doc, loader, problems) for i, item in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        problems.items.append(ConfigProblem(_loc(doc.file, node), format_key_path(path), f"bad value: {exc}"))
        return None


def load_yaml_file(path: Path, problems: Problems, *, key_path: PathKey = (), referrer: Doc | None = None) -> Doc | None:
    """Read and parse a YAML file; a missing or unreadable file is a located problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.add(referrer, key_path, f"file not found: {path}")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(referrer, key_path, f"cannot read {path}: {exc}")
        return None
    return parse_yaml(text, str(path), problems)
