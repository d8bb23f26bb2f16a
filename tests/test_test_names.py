"""The tests' own layout: tests/ has no packages (no __init__.py), so pytest imports each
file by its basename; two files of one name (a second conftest.py among them) would shadow
each other, and `from conftest import ...` would find the wrong one."""

from __future__ import annotations

import collections
import os

from helpers import REPO


def test_every_python_file_under_tests_has_a_name_of_its_own():
    seen: dict[str, list[str]] = collections.defaultdict(list)
    for folder, dirs, files in os.walk(os.path.join(REPO, "tests")):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "vendor")]
        for name in files:
            if name.endswith(".py"):
                seen[name].append(os.path.relpath(os.path.join(folder, name), REPO))
    assert not {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert "__init__.py" not in seen
