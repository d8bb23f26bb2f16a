"""The layers are code, not prose: import-linter's contracts in pyproject.toml
(``[tool.importlinter]``: web above jobs above process, web above the listener, which
imports nothing of the jobs, the commands or the wiring; leaves that import nothing of the
package; no cycles; type-only imports included), and the process layer free of Tornado's
HTTP modules, which import-linter cannot name (it sees external packages whole).
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
HTTP_MODULES = ("tornado.web", "tornado.httpserver", "tornado.httputil", "tornado.httpclient")


def test_the_import_contracts_are_kept():
    lint_imports = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    done = subprocess.run([lint_imports, "--no-cache"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout, done.stdout


def test_the_process_layer_imports_no_http_module():
    for path in (REPO / "taskrunner" / "process").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(HTTP_MODULES), f"{path.name} imports {name}"
