"""The ``--actions`` file: named commands with typed parameters, read whole or refused.

TOML, one table per action under ``actions``::

    [actions.greet]
    description = "Greet someone"
    args = ["/usr/bin/printf", "%s, %s!\\n", "{greeting}", "{name}"]
    timeout = 10                  # a cap: a request may ask for less, never more
    cwd = "/srv"                  # optional; env = { LANG = "C.UTF-8" } too
    limit_cpu = 5                 # optional: any per-caller setting (user, limit_*)

    [actions.greet.params.greeting]
    type = "string"
    default = "hello"
    max_length = 20

A file that does not parse, misses a key or breaks a rule is refused whole with one line
naming the action and the key (`StartupError`): at start the instance stops, on a reload
(SIGHUP) the old set stays. The rules of a parameter are `taskrunner.actions.params`'s, of
the template `taskrunner.actions.template`'s.

An action's limits are settings a caller of ``--callers`` may override (``user``,
``limit_*``); where the caller's and the action's both set one, the action's wins: the
operator wrote it for this command.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taskrunner.actions.params import Param, parse_param
from taskrunner.actions.template import (
    Element,
    TemplateError,
    check_template,
    expand,
    parse_template,
    whole_names,
)
from taskrunner.config import Config, per_caller_settings
from taskrunner.errors import InvalidParam, StartupError
from taskrunner.tomlfile import read_toml

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEYS = {"description", "args", "timeout", "cwd", "env", "params"}


@dataclass(frozen=True)
class Action:
    """One action: its argument template and parameters, its deadline and where it runs."""

    name: str
    description: str
    elements: tuple[Element, ...]
    params: Mapping[str, Param]
    timeout: float | None = None
    """The cap of a request's ``timeout``, and the default (None: the instance's)."""
    cwd: str | None = None
    env: Mapping[str, str] | None = None
    limits: Mapping[str, Any] = field(default_factory=dict)
    """Per-caller settings (by `Config` field name) this action runs with."""

    def bind(self, given: Any) -> tuple[list[str], dict[str, Any]]:
        """The argument list for the request's ``params`` and those parameters as checked,
        defaults included; `InvalidParam` naming the parameter and the rule."""
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise InvalidParam("params must be an object of parameter values")
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            known = ", ".join(self.params) or "none"
            raise InvalidParam(f"unknown parameter{'s' if len(unknown) > 1 else ''} "
                               f"{', '.join(map(_shown, unknown))} for action {self.name!r}; "
                               f"known: {known}")
        whole = whole_names(self.elements)
        values: dict[str, Any] = {}
        for name, param in self.params.items():
            if name in given:  # null is a value, and refused: leave a parameter out instead
                values[name] = param.check(given[name], name in whole)
            elif param.required:
                raise InvalidParam(f"parameter {name} is required (no default)")
            else:
                values[name] = param.default
        return expand(self.elements, self.params, values), values

    def json_schema(self) -> dict[str, Any]:
        """The ``params`` object this action takes, as JSON Schema."""
        whole = whole_names(self.elements)
        return {
            "type": "object",
            "properties": {name: p.json_schema(name in whole) for name, p in self.params.items()},
            "required": [name for name, p in self.params.items() if p.required],
            "additionalProperties": False,
        }


@dataclass(frozen=True)
class Actions:
    """The actions an instance knows now; replaced whole when the file is re-read."""

    actions: Mapping[str, Action] = field(default_factory=dict)
    source: str = ""

    def get(self, name: str) -> Action | None:
        """The action ``name``, or None."""
        return self.actions.get(name)

    @property
    def names(self) -> list[str]:
        """Every action's name, in the file's order."""
        return list(self.actions)


def load_actions(path: str, config: Config) -> Actions:
    """Read the actions file at ``path``; `StartupError` (one line) if it cannot be used."""
    where = f"--actions {path!r}"
    data = read_toml(path, where)
    if set(data) != {"actions"} or not isinstance(data["actions"], dict):
        raise StartupError(f"{where}: expected [actions.NAME] tables and nothing else at the "
                           "top level")
    if not data["actions"]:
        raise StartupError(f"{where}: no actions; expected at least one [actions.NAME] table")
    actions = {name: parse_action(name, entry, f"{where}: action {name!r}", config)
               for name, entry in data["actions"].items()}
    return Actions(actions, path)


def parse_action(name: str, entry: Any, where: str, config: Config) -> Action:
    """One action of the file; `StartupError` (one line beginning with ``where``)."""
    if not _NAME.fullmatch(name):
        raise StartupError(f"{where}: a name is 1-64 letters, digits, '.', '-' or '_'")
    if not isinstance(entry, dict):
        raise StartupError(f"{where}: expected a table")
    limits_known = {n.replace("_", "-"): n for n in per_caller_settings()}
    limits_known.update({n: n for n in per_caller_settings()})
    unknown = set(entry) - _KEYS - set(limits_known)
    if unknown:
        raise StartupError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: "
                           f"{', '.join(sorted(_KEYS | set(per_caller_settings())))}")
    args = entry.get("args")
    if (not isinstance(args, list) or not args
            or not all(isinstance(a, str) and "\x00" not in a for a in args)):
        raise StartupError(f"{where}: args missing or not a non-empty list of strings")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise StartupError(f"{where}: description must be a string")
    table = entry.get("params", {})
    if not isinstance(table, dict):
        raise StartupError(f"{where}: params must be a table of [actions.{name}.params.NAME]")
    params = {pname: parse_param(pname, pentry, where) for pname, pentry in table.items()}
    try:
        elements = parse_template(args)
        check_template(elements, params)
    except TemplateError as exc:
        raise StartupError(f"{where}: args: {exc}") from None
    return Action(name, description, elements, params, _timeout(entry, where, config),
                  _cwd(entry, where), _env(entry, where),
                  _limits(entry, where, config, limits_known))


def _timeout(entry: dict[str, Any], where: str, config: Config) -> float | None:
    value = entry.get("timeout")
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not (math.isfinite(value) and 0 < value <= config.max_timeout)):
        raise StartupError(f"{where}: timeout must be a number of seconds above 0 and at most "
                           f"--max-timeout ({config.max_timeout:g})")
    return float(value)


def _cwd(entry: dict[str, Any], where: str) -> str | None:
    value = entry.get("cwd")
    if value is not None and (not isinstance(value, str) or not value.startswith("/")
                              or "\x00" in value):
        raise StartupError(f"{where}: cwd must be an absolute path")
    return value


def _env(entry: dict[str, Any], where: str) -> dict[str, str] | None:
    value = entry.get("env")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StartupError(f"{where}: env must be a table of strings")
    for key, item in value.items():
        if not key or "=" in key or "\x00" in key:
            raise StartupError(f"{where}: env key {key!r} must be a name without '='")
        if not isinstance(item, str) or "\x00" in item:
            raise StartupError(f"{where}: env {key} must be a string")
    return dict(value)


def _limits(entry: dict[str, Any], where: str, config: Config,
            known: Mapping[str, str]) -> dict[str, Any]:
    # Checked as the callers file checks a caller's limits: the type of the flag, then the
    # Config's own rules on the whole.
    limits: dict[str, Any] = {}
    settings = per_caller_settings()
    for key, value in entry.items():
        name = known.get(key)
        if name is None or key in _KEYS:
            continue
        kind = type(settings[name].default)
        if type(value) is not kind:
            raise StartupError(f"{where}: {key} must be a {kind.__name__}")
        limits[name] = value
    try:
        dataclasses.replace(config, **limits)
    except ValueError as exc:
        raise StartupError(f"{where}: {exc}") from None
    return limits


def _shown(name: str) -> str:
    return repr(name if len(name) <= 40 else name[:37] + "...")
