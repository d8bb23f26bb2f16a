"""requirements/ against pyproject.toml: the pinned environments and the declared
dependencies must name the same packages, at versions the declared ranges admit.

Fails after a dependency is added, removed or re-ranged in pyproject.toml until
``scripts/lock`` is run (and the other way round: a lock edited by hand).
"""

from __future__ import annotations

import os
import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)")
VIA = re.compile(r"^\s+#\s+(?:via\s+)?([A-Za-z0-9][A-Za-z0-9._-]*)")


def _project() -> dict[str, object]:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]  # type: ignore[no-any-return]


def _declared(extras: list[str]) -> list[Requirement]:
    project = _project()
    lines = list(project["dependencies"])  # type: ignore[call-overload]
    for extra in extras:
        lines += project["optional-dependencies"][extra]  # type: ignore[index]
    return [Requirement(line) for line in lines]


def _lock(name: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """The lock's pins (name -> version) and, for each, what pulled it in (its "via")."""
    pins: dict[str, str] = {}
    via: dict[str, set[str]] = {}
    current = ""
    with open(os.path.join(REPO, "requirements", name)) as f:
        for line in f:
            if pin := PIN.match(line):
                current = canonicalize_name(pin[1])
                pins[current] = pin[2]
                via[current] = set()
            elif current and (parent := VIA.match(line)) and "--hash" not in line:
                via[current].add(canonicalize_name(parent[1]))
    return pins, via


@pytest.mark.parametrize(("lock", "extras"), [("test.txt", ["test", "stack", "postgresql", "otel"]),
                                              ("serve.txt", ["postgresql"])])
def test_the_lock_pins_exactly_what_pyproject_declares(lock: str, extras: list[str]) -> None:
    pins, via = _lock(lock)
    declared = {canonicalize_name(r.name): r for r in _declared(extras)}
    for name, requirement in declared.items():
        assert name in pins, f"{name} is in pyproject.toml, not in requirements/{lock}: " \
            "run scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"requirements/{lock} pins {name}=={pins[name]}, outside {requirement}: " \
            "run scripts/lock"
    # Every pin is needed: declared, or pulled in by something that is.
    needed = set(declared)
    grew = True
    while grew:
        grew = False
        for name, parents in via.items():
            if name not in needed and parents & needed:
                needed.add(name)
                grew = True
    stray = sorted(set(pins) - needed)
    assert not stray, f"requirements/{lock} pins what pyproject.toml no longer needs: " \
        f"{stray}: run scripts/lock"
