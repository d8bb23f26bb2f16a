"""The entry points as a new user meets them: where trun is, and a Python that lacks a
dependency.

After ``scripts/serve``, ``trun`` sits in the virtual environment's ``bin``: the script says
so once, unless the shell finds it already. ``python3 -m taskrunner.client`` or ``-m
taskrunner`` run by a Python without httpx or Tornado (the system's, the package found
through ``PYTHONPATH``) end in one line naming the module, never a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from helpers import PY, REPO

SYSTEM_PYTHON = "/usr/bin/python3"


def _lacks(python: str, module: str) -> bool:
    probe = subprocess.run([python, "-s", "-c", f"import {module}"], capture_output=True)
    return probe.returncode != 0


bare = pytest.mark.skipif(
    not os.access(SYSTEM_PYTHON, os.X_OK) or not _lacks(SYSTEM_PYTHON, "httpx")
    or not _lacks(SYSTEM_PYTHON, "tornado"),
    reason=f"needs a {SYSTEM_PYTHON} without httpx and tornado")


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory):
    """The package alone, away from any checkout's .venv."""
    root = tmp_path_factory.mktemp("bare")
    shutil.copytree(os.path.join(REPO, "taskrunner"), root / "taskrunner",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return str(root)


def _run_bare(path: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": path, "LANG": "C.UTF-8"}
    return subprocess.run([SYSTEM_PYTHON, "-s", *argv], capture_output=True, text=True,
                          env=env, cwd=path, timeout=30)  # -m puts the cwd first


@bare
@pytest.mark.parametrize(("argv", "program", "module", "status"), [
    (["-m", "taskrunner.client", "health"], "trun", "httpx", 125),
    (["-m", "taskrunner.client", "--print-completion", "bash"], "trun", "httpx", 125),
    (["-m", "taskrunner", "--port", "8885"], "taskrunner", "tornado", 1),
], ids=["trun", "trun-completion", "server"])
def test_a_missing_dependency_is_one_line(package_copy, argv, program, module, status):
    done = _run_bare(package_copy, *argv)
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        f"{program}: needs {module}, which this Python ({SYSTEM_PYTHON}) lacks: use the "
        f"{program} of a virtual environment that has taskrunner, or install taskrunner"), lines
    assert done.stdout == ""


@bare
def test_in_a_checkout_the_line_names_its_venv_trun(tmp_path):
    # A checkout as scripts/serve leaves it: the package beside a .venv that has trun.
    shutil.copytree(os.path.join(REPO, "taskrunner"), tmp_path / "taskrunner",
                    ignore=shutil.ignore_patterns("__pycache__"))
    trun = tmp_path / ".venv" / "bin" / "trun"
    trun.parent.mkdir(parents=True)
    trun.write_text("#!/bin/sh\n")
    trun.chmod(0o755)
    done = _run_bare(str(tmp_path), "-m", "taskrunner.client", "ps")
    assert done.returncode == 125
    assert done.stderr.splitlines() == [
        f"trun: needs httpx, which this Python ({SYSTEM_PYTHON}) lacks: use {trun}, or "
        "install taskrunner into this Python (pip install taskrunner; in a checkout: "
        "pip install .)"]


def _serve_version(path: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(PATH=path, PYTHON=PY)
    return subprocess.run([os.path.join(REPO, "scripts", "serve"), "--version"],
                          capture_output=True, text=True, env=env, timeout=600)


def test_serve_says_where_trun_is_when_the_shell_cannot_find_it():
    venv_bin = os.path.dirname(PY)
    done = _serve_version("/usr/bin:/bin")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "taskrunner 0.1.0\n"
    said = [line for line in done.stderr.splitlines() if line.startswith("trun ")]
    assert len(said) == 1, done.stderr
    # Relative to the checkout when the venv is in it, absolute otherwise.
    shown = os.path.relpath(venv_bin, REPO) if venv_bin.startswith(REPO + os.sep) else venv_bin
    assert said[0] == (f"trun (the client) is {shown}/trun; put it on PATH with: "
                       f". {shown}/activate")

    on_path = _serve_version(f"{venv_bin}:/usr/bin:/bin")
    assert on_path.returncode == 0
    assert "trun (the client)" not in on_path.stderr
