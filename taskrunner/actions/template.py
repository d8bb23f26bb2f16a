"""An action's argument template: ``args`` with ``{name}`` placeholders, and its expansion.

Each element of ``args`` is read once, when the file is: literal text, ``{{`` and ``}}`` for
literal braces, and ``{name}`` placeholders, which may be the whole element or part of one
(``--env={env}``). Expanding puts each value into the element where its placeholder stands,
as text: a value never becomes more or fewer elements than the template says, is never
split or globbed, and no shell ever sees it (the engine executes the argument list). The
only elements a value adds or takes away are the ones its type says:

- an ``array`` parameter stands as a whole element and is spliced, one element per item;
- a ``boolean`` with a ``flag`` stands as a whole element: the flag when true, nothing when
  false (without a flag, ``true`` or ``false`` as text);
- an ``integer`` is its decimal text.

``args[0]`` is fixed by the operator: it holds no placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskrunner.actions.params import Param

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class Element:
    """One element of the template: literal text and placeholders, in order. A part that
    is a `str` is literal; a part in a 1-tuple is the name of a placeholder."""

    parts: tuple[str | tuple[str], ...]

    @property
    def whole(self) -> str | None:
        """The parameter's name if the element is one placeholder and nothing else."""
        if len(self.parts) == 1 and isinstance(self.parts[0], tuple):
            return self.parts[0][0]
        return None

    @property
    def names(self) -> list[str]:
        """The parameters this element names."""
        return [part[0] for part in self.parts if isinstance(part, tuple)]


class TemplateError(ValueError):
    """A template that cannot be used; the message names the element and the rule."""


def parse_template(args: list[str]) -> tuple[Element, ...]:
    """The elements of ``args``; `TemplateError` for a lone brace or a bad placeholder."""
    return tuple(_element(text, index) for index, text in enumerate(args))


def _element(text: str, index: int) -> Element:
    parts: list[str | tuple[str]] = []
    literal = ""
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        literal += text[position:match.start()]
        position = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            literal += token[0]
            continue
        name = match.group(1)
        if name is None or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise TemplateError(f"args[{index}]: {token!r} is not a placeholder: write "
                                "{name}, or {{ and }} for literal braces")
        if literal:
            parts.append(literal)
            literal = ""
        parts.append((name,))
    literal += text[position:]
    if literal or not parts:
        parts.append(literal)
    return Element(tuple(parts))


def check_template(elements: tuple[Element, ...], params: Mapping[str, Param]) -> None:
    """`TemplateError` unless ``elements`` and ``params`` fit: ``args[0]`` fixed, every
    placeholder a parameter and every parameter used, arrays and flags whole elements."""
    if not elements:
        raise TemplateError("args must not be empty: args[0] names the program")
    if elements[0].names:
        raise TemplateError("args[0] must be fixed (no placeholder): the operator chooses "
                            "the program")
    if not elements[0].parts[0]:
        raise TemplateError("args[0] must not be empty: it names the program")
    used = set()
    for index, element in enumerate(elements):
        for name in element.names:
            param = params.get(name)
            if param is None:
                raise TemplateError(f"args[{index}]: {{{name}}} names no parameter")
            used.add(name)
            spliced = param.type == "array" or (param.type == "boolean" and param.flag)
            if spliced and element.whole is None:
                raise TemplateError(f"args[{index}]: {{{name}}} is an "
                                    f"{'array' if param.type == 'array' else 'flag'}, so it "
                                    "must be an element of its own")
    unused = sorted(set(params) - used)
    if unused:
        raise TemplateError(f"param(s) {', '.join(unused)} appear in no element of args")


def whole_names(elements: tuple[Element, ...]) -> set[str]:
    """The parameters that stand as a whole element somewhere (the leading-dash rule)."""
    return {element.whole for element in elements if element.whole is not None}


def expand(elements: tuple[Element, ...], params: Mapping[str, Param],
           values: Mapping[str, Any]) -> list[str]:
    """The argument list for ``values`` (already checked, every parameter present)."""
    argv: list[str] = []
    for element in elements:
        name = element.whole
        if name is not None:
            param, value = params[name], values[name]
            if param.type == "array":
                argv.extend(value)
                continue
            if param.type == "boolean" and param.flag:
                if value:
                    argv.append(param.flag)
                continue
        argv.append("".join(part if isinstance(part, str) else _text_of(values[part[0]])
                            for part in element.parts))
    return argv


def _text_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
