"""YAML text of plain data (mappings, lists, strings, integers, booleans), in block style,
as people write Kubernetes manifests: the package ships no YAML library, and the manifests
need none of YAML's other features.

A string is written plain when no YAML reader could take it for anything else (a number,
a boolean, null, a flow or a comment), in a literal block (``|``) when it spans lines, and
double-quoted otherwise (a JSON string is a valid YAML double-quoted scalar). An `Octal`
is written as Kubernetes' own examples write file modes (``0440``), which YAML 1.1 readers
(PyYAML, Kubernetes' sigs.k8s.io/yaml) take as octal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Octal", "dump", "dump_all"]

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
# YAML 1.1's booleans and nulls (y, n, yes, no, on, off, ...): quoted, never plain.
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
_BLOCK_LINE = re.compile(r"[^\x00-\x1f\x7f]*")


class Octal(int):
    """An integer written in octal (a file mode)."""


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Octal):
        return f"0{value:o}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        return json.dumps(value)
    raise TypeError(f"no YAML for {type(value).__name__}")


def _block(text: str, indent: str) -> str | None:
    # A literal block keeps every character, given lines free of control characters and
    # not starting with a space (which would change the block's indentation).
    lines = text.split("\n")
    chomp = "-"
    if lines[-1] == "":
        lines.pop()
        chomp = ""
    if not lines or "" in lines[-1:] or any(
            not _BLOCK_LINE.fullmatch(line) or line.startswith(" ") or line != line.rstrip()
            for line in lines):
        return None
    return f"|{chomp}\n" + "\n".join(f"{indent}{line}" if line else "" for line in lines)


def _value(value: Any, indent: str) -> str:
    # What follows "key:" or "-": " scalar", or a newline and an indented block.
    if isinstance(value, Mapping):
        return " {}" if not value else "\n" + _mapping(value, indent + "  ")
    if isinstance(value, Sequence) and not isinstance(value, str):
        return " []" if not value else "\n" + _sequence(value, indent + "  ")
    if isinstance(value, str) and "\n" in value:
        block = _block(value, indent + "  ")
        if block is not None:
            return " " + block
    return " " + _scalar(value)


def _mapping(data: Mapping[str, Any], indent: str) -> str:
    return "\n".join(f"{indent}{_scalar(key)}:{_value(value, indent)}"
                     for key, value in data.items())


def _sequence(items: Sequence[Any], indent: str) -> str:
    lines = []
    for item in items:
        if isinstance(item, Mapping) and item:
            # The first key on the dash's line, the others under it.
            text = _mapping(item, indent + "  ")
            lines.append(f"{indent}- {text[len(indent) + 2:]}")
        else:
            lines.append(f"{indent}-{_value(item, indent)}")
    return "\n".join(lines)


def dump(data: Mapping[str, Any]) -> str:
    """One document: ``data`` as a block mapping, ending with a newline."""
    return _mapping(data, "") + "\n"


def dump_all(documents: Sequence[Mapping[str, Any]]) -> str:
    """Several documents, each opened by ``---``."""
    return "".join(f"---\n{dump(document)}" for document in documents)
