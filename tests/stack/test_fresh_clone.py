"""What a new user types in a fresh clone works as typed: ``supervisord -c supervisord.conf``
starts the four instances on 127.0.0.1:8885-8888 with nothing made by hand.

The clone is the repository's files (``git ls-files``: tracked, plus new files not yet
ignored) copied to a temporary directory; supervisord runs from it with this environment's
``bin`` first on PATH, as in an activated virtual environment, and no ``PYTHON`` set.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys

from helpers import pid_alive, wait_until
from stackutil import REPO, listening, needs_stack, request

pytestmark = needs_stack()

PORTS = [8885, 8886, 8887, 8888]


def _fresh_clone(dest: str) -> None:
    files = subprocess.run(
        ["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        source = os.path.join(REPO, name)
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(source, os.path.join(dest, name))


def _healthy(port: int) -> bool:
    try:
        return request("127.0.0.1", port, "GET", "/healthz", timeout=2)[0] == 200
    except OSError:
        return False


def test_supervisord_starts_the_four_instances_from_a_fresh_clone(tmp_path):
    busy = [port for port in PORTS if listening(port)]
    assert not busy, f"ports {busy} are taken: this test runs supervisord.conf as typed"
    clone = str(tmp_path / "taskrunner")
    _fresh_clone(clone)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    supervisord = shutil.which("supervisord", path=env["PATH"])
    assert supervisord, "supervisord is not installed: scripts/install"
    pidfile = os.path.join(clone, "run", "supervisord.pid")
    try:
        started = subprocess.run([supervisord, "-c", "supervisord.conf"], cwd=clone, env=env,
                                 capture_output=True, text=True, timeout=30, check=False)
        assert started.returncode == 0, started.stdout + started.stderr
        assert wait_until(lambda: all(_healthy(port) for port in PORTS), 30), \
            pathlib.Path(clone, "run", "log", "supervisord.log").read_text()
    finally:
        _shut_down(clone, env, pidfile)
    assert not any(listening(port) for port in PORTS)


def _shut_down(clone: str, env: dict[str, str], pidfile: str) -> None:
    subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", "supervisord.conf",
                    "shutdown"], cwd=clone, env=env, capture_output=True, timeout=60,
                   check=False)
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid = int(pathlib.Path(pidfile).read_text())
        if not wait_until(lambda: not pid_alive(pid), 40):
            os.kill(pid, signal.SIGKILL)
