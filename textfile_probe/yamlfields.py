"""Validating a YAML node tree field by field, with errors that say where.

Strategy: the YAML is composed into nodes, not constructed into dicts, so every value keeps its
line. A `Parser` takes (node, YAML path, errors, base directory) and returns the value or None
after reporting why not; `fields` runs a table of them over a mapping and rejects unknown and
duplicate keys. `Errors` collects every message (and every warning) of one file, so a check shows
them all at once. config.py holds the schema; this module only the machinery.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


class Errors:
    """Collects located error messages for one file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.messages: list[str] = []
        self.warnings: list[str] = []

    def add(self, node: yaml.Node, where: str, message: str) -> None:
        self.messages.append(f"{self.path}:{node.start_mark.line + 1}: {where}: {message}")

    def warn(self, node: yaml.Node, where: str, message: str) -> None:
        self.warnings.append(f"{self.path}:{node.start_mark.line + 1}: {where}: {message}")


_constructor = yaml.SafeLoader("")


def scalar(node: yaml.Node) -> Any:
    return _constructor.construct_object(node, deep=True) if isinstance(node, yaml.ScalarNode) else node


def mapping(node: yaml.Node, where: str, errors: Errors) -> Iterator[tuple[str, yaml.Node]]:
    """Yield (key, value node) pairs; report non-mappings and duplicate keys."""
    if not isinstance(node, yaml.MappingNode):
        errors.add(node, where, f"expected a mapping, got {kind(node)}")
        return
    _constructor.flatten_mapping(node)
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = str(scalar(key_node))
        if key in seen:
            errors.add(key_node, f"{where}.{key}".lstrip("."), "duplicate key")
            continue
        seen.add(key)
        yield key, value_node


def kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        value = scalar(node)
        return "null" if value is None else f"{type(value).__name__} {value!r}"
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


# Field parsers: (node, where, errors, base_dir) -> value, or None after reporting an error.
Parser = Callable[[yaml.Node, str, Errors, Path], Any]


def parse_duration(text: str) -> float:
    """Parse '30s', '1m30s', '500ms', '2h' or a bare number of seconds into seconds."""
    match = _DURATION.match(text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise ValueError(text)
    hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def duration(node: yaml.Node, where: str, errors: Errors, _base: Path) -> float | None:
    value = scalar(node)
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        seconds = float(value) if isinstance(value, int | float) else parse_duration(str(value))
    except (ValueError, TypeError):
        errors.add(node, where, f"expected a duration like 10s, 1m30s or 500ms, got {kind(node)}")
        return None
    if seconds <= 0:
        errors.add(node, where, f"expected a positive duration, got {kind(node)}")
        return None
    return seconds


def typed(expected: type, what: str) -> Parser:
    def parse(node: yaml.Node, where: str, errors: Errors, _base: Path) -> Any:
        value = scalar(node)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            errors.add(node, where, f"expected {what}, got {kind(node)}")
            return None
        return value

    return parse


def choice(choices: tuple[str, ...]) -> Parser:
    def parse(node: yaml.Node, where: str, errors: Errors, _base: Path) -> Any:
        value = scalar(node)
        if value not in choices:
            errors.add(node, where, f"expected one of {', '.join(choices)}, got {kind(node)}")
            return None
        return value

    return parse


def readable_file(node: yaml.Node, where: str, errors: Errors, base: Path) -> str | None:
    value = typed(str, "a file path")(node, where, errors, base)
    if value is None:
        return None
    path = base / value
    try:
        # Non-blocking: a FIFO named by mistake must not hang the load.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        os.close(fd)
    except OSError as exc:
        errors.add(node, where, f"expected a readable file, got {str(path)!r}: {exc.strerror}")
        return None
    if not regular:
        errors.add(node, where, f"expected a regular file, got {str(path)!r}")
        return None
    return str(path)


def fields(
    node: yaml.Node, where: str, parsers: dict[str, Parser], errors: Errors, base: Path
) -> tuple[dict[str, Any], dict[str, yaml.Node]]:
    """Parse a mapping with a fixed set of keys; return values and their nodes (for locations)."""
    values: dict[str, Any] = {}
    nodes: dict[str, yaml.Node] = {}
    for key, value_node in mapping(node, where, errors):
        path = f"{where}.{key}" if where else key
        parser = parsers.get(key)
        if parser is None:
            errors.add(value_node, path, f"unknown key; expected one of {', '.join(sorted(parsers))}")
            continue
        value = parser(value_node, path, errors, base)
        if value is not None:
            values[key] = value
            nodes[key] = value_node
    return values, nodes
