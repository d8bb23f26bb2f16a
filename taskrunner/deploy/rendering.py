"""A shipped template (``taskrunner/deploy/templates/``) with its ``@NAME@`` marks filled."""

from __future__ import annotations

from importlib import resources


def render(name: str, values: dict[str, str]) -> str:
    """The template ``name`` with each ``@KEY@`` replaced by ``values[KEY]``."""
    text = resources.files("taskrunner.deploy").joinpath("templates", name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text
