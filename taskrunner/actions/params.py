"""An action's parameter: its type and bounds as the file writes them, checking a value
against them, and the same rules as JSON Schema.

Four types: ``string`` (``enum``, ``pattern``, ``max_length``), ``integer`` (``minimum``,
``maximum``), ``boolean`` (``flag``: one argv element, present when true) and ``array`` of
strings (``max_items``; each item a string with the string's rules). ``default`` makes a
parameter optional. Fail closed: a string (or an array's items) needs at least one of
``enum``, ``pattern`` or ``max_length``, an integer both ``minimum`` and ``maximum``, an array
``max_items``, so that a file cut short never accepts more than its operator meant;
``pattern = ".*"`` says "any string" on purpose. A ``pattern`` must match the whole value.

A value that would stand as a whole argv element and begins with ``-`` is refused unless
the parameter says ``allow_dash = true``: the program would read it as an option (argument
injection). Which values stand whole is the template's to say (`taskrunner.actions.template`),
so `Param.check` takes it as an argument.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from taskrunner.errors import InvalidParam, StartupError
from taskrunner.jsonkind import json_kind

TYPES = ("string", "integer", "boolean", "array")
_KEYS = {
    "string": {"type", "description", "default", "enum", "pattern", "max_length", "allow_dash"},
    "integer": {"type", "description", "default", "minimum", "maximum"},
    "boolean": {"type", "description", "default", "flag"},
    "array": {"type", "description", "default", "enum", "pattern", "max_length", "allow_dash",
              "max_items"},
}
MAX_STRING = 4096
"""Longest string any parameter takes, whatever its ``max_length`` (also a bound for
``enum`` and ``pattern``-only strings)."""
MAX_ITEMS = 256
"""Most items any array parameter takes."""
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
INT_LIMIT = 2**53
"""Bounds an integer parameter may name: JSON numbers every client reads exactly."""


@dataclass(frozen=True)
class Param:
    """One parameter of an action, as checked when the file was read."""

    name: str
    type: str
    description: str = ""
    default: Any = None
    required: bool = True
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    max_length: int | None = None
    allow_dash: bool = False
    minimum: int | None = None
    maximum: int | None = None
    flag: str | None = None
    max_items: int | None = None

    def check(self, value: Any, whole: bool) -> Any:
        """``value`` if it keeps every rule (``whole``: it stands as an argv element of its
        own); else `InvalidParam` naming this parameter and the rule."""
        if self.type == "integer":
            if type(value) is float and value.is_integer():
                value = int(value)  # 9.0 is an integer in JSON (and JSON Schema)
            if type(value) is not int:
                raise self._refused(f"must be an integer, not {json_kind(value)}")
            assert self.minimum is not None and self.maximum is not None
            if not self.minimum <= value <= self.maximum:
                raise self._refused(f"must be from {self.minimum} to {self.maximum}")
            return value
        if self.type == "boolean":
            if type(value) is not bool:
                raise self._refused(f"must be true or false, not {json_kind(value)}")
            return value
        if self.type == "array":
            if not isinstance(value, list):
                raise self._refused(f"must be an array of strings, not {json_kind(value)}")
            assert self.max_items is not None
            if len(value) > self.max_items:
                raise self._refused(f"has {len(value)} items; at most {self.max_items}")
            return [self._string(item, whole, f"[{i}]") for i, item in enumerate(value)]
        return self._string(value, whole, "")

    def _string(self, value: Any, whole: bool, index: str) -> str:
        if not isinstance(value, str):
            raise self._refused(f"must be a string, not {json_kind(value)}", index)
        if "\x00" in value:
            raise self._refused("must not contain a NUL byte", index)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise self._refused("is not valid Unicode (a lone surrogate)", index) from None
        limit = min(self.max_length or MAX_STRING, MAX_STRING)
        if len(value) > limit:
            raise self._refused(f"is longer than {limit} characters (max_length)", index)
        if self.enum is not None and value not in self.enum:
            raise self._refused(f"must be one of {', '.join(map(repr, self.enum))} (enum)",
                                index)
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise self._refused(f"must match the whole of {self.pattern!r} (pattern)", index)
        if whole and value.startswith("-") and not self.allow_dash:
            raise self._refused("must not begin with '-': the program would read it as an "
                                "option (allow_dash)", index)
        return value

    def _refused(self, rule: str, index: str = "") -> InvalidParam:
        return InvalidParam(f"parameter {self.name}{index} {rule}")

    def json_schema(self, whole: bool) -> dict[str, Any]:
        """This parameter's rules as JSON Schema (draft 2020-12); ``whole``: it stands as an
        argv element of its own somewhere, so the leading-dash rule applies."""
        schema: dict[str, Any]
        if self.type == "integer":
            schema = {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}
        elif self.type == "boolean":
            schema = {"type": "boolean"}
        else:
            item: dict[str, Any] = {"type": "string",
                                    "maxLength": min(self.max_length or MAX_STRING, MAX_STRING),
                                    "pattern": "^[^\\u0000]*$"}
            if self.enum is not None:
                item["enum"] = list(self.enum)
            if self.pattern is not None:
                # The whole value, as re.fullmatch: "$" alone would let a final newline by.
                item["allOf"] = [{"pattern": schema_pattern(self.pattern)}]
            if whole and not self.allow_dash:
                item["not"] = {"pattern": "^-"}
            schema = item if self.type == "string" else {
                "type": "array", "items": item, "maxItems": self.max_items}
        if self.description:
            schema["description"] = self.description
        if not self.required:
            schema["default"] = self.default
        return schema


def schema_pattern(pattern: str) -> str:
    """``pattern`` as JSON Schema says "the whole value": anchored, and no final newline
    let by (``$`` alone would, where Python's ``re.fullmatch`` does not)."""
    return f"^(?:{pattern})$(?!\\n)"


def parse_param(name: str, entry: Any, where: str) -> Param:
    """The parameter ``name`` of the file's table ``entry``; `StartupError` (one line
    beginning with ``where``, naming the key) if it is not one."""
    where = f"{where} param {name!r}"
    if not _NAME.fullmatch(name):
        raise StartupError(f"{where}: a parameter's name is 1-64 letters, digits or '_', "
                           "not beginning with a digit")
    if not isinstance(entry, dict):
        raise StartupError(f"{where}: expected a table")
    kind = entry.get("type")
    if kind not in TYPES:
        raise StartupError(f"{where}: type must be one of {', '.join(TYPES)}")
    unknown = set(entry) - _KEYS[kind]
    if unknown:
        raise StartupError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for a "
                           f"{kind}; known: {', '.join(sorted(_KEYS[kind]))}")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise StartupError(f"{where}: description must be a string")
    fields: dict[str, Any] = {"name": name, "type": kind, "description": description}
    if kind == "integer":
        for key in ("minimum", "maximum"):
            value = entry.get(key)
            if type(value) is not int or abs(value) > INT_LIMIT:
                raise StartupError(f"{where}: {key} missing or not an integer within ±2^53: "
                                   "an integer's bounds are written out")
            fields[key] = value
        if fields["minimum"] > fields["maximum"]:
            raise StartupError(f"{where}: minimum is above maximum")
    elif kind == "boolean":
        flag = entry.get("flag")
        if flag is not None and (not isinstance(flag, str) or not flag or "\x00" in flag):
            raise StartupError(f"{where}: flag must be a non-empty string (one argv element)")
        fields["flag"] = flag
    else:
        fields.update(_string_rules(entry, where))
        if kind == "array":
            items = entry.get("max_items")
            if type(items) is not int or not 0 <= items <= MAX_ITEMS:
                raise StartupError(f"{where}: max_items missing or not an integer from 0 to "
                                   f"{MAX_ITEMS}: an array's size is written out")
            fields["max_items"] = items
    param = Param(**fields)
    if "default" in entry:
        default = entry["default"]
        try:
            default = param.check(default, whole=False)
        except InvalidParam as exc:
            raise StartupError(f"{where}: default: {exc.message}") from None
        param = Param(**{**fields, "default": default, "required": False})
    return param


def _string_rules(entry: dict[str, Any], where: str) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    enum = entry.get("enum")
    if enum is not None:
        if (not isinstance(enum, list) or not enum
                or not all(isinstance(v, str) and "\x00" not in v for v in enum)):
            raise StartupError(f"{where}: enum must be a non-empty list of strings")
        rules["enum"] = tuple(enum)
    pattern = entry.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise StartupError(f"{where}: pattern must be a string (a regular expression)")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise StartupError(f"{where}: pattern is not a regular expression: {exc}") from None
        try:  # as its JSON Schema shows it (a flag such as (?s) must then be scoped: (?s:...))
            re.compile(schema_pattern(pattern))
        except re.error as exc:
            raise StartupError(f"{where}: pattern cannot stand in a group ({exc}): scope a "
                               "flag, (?s:...) rather than (?s)...") from None
        rules["pattern"] = pattern
    length = entry.get("max_length")
    if length is not None:
        if type(length) is not int or not 1 <= length <= MAX_STRING:
            raise StartupError(f"{where}: max_length must be an integer from 1 to {MAX_STRING}")
        rules["max_length"] = length
    if not rules:
        raise StartupError(f"{where}: no bound: a string needs enum, pattern or max_length "
                           "(pattern = \".*\" to take any string, said on purpose)")
    dash = entry.get("allow_dash", False)
    if type(dash) is not bool:
        raise StartupError(f"{where}: allow_dash must be true or false")
    rules["allow_dash"] = dash
    return rules

