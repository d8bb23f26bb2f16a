"""What the benchmark scripts share: starting an instance of a source tree and learning
its port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_instance(flags: Sequence[str], log_path: str, source: str = REPO,
                   env: Mapping[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``python -m taskrunner --port 0 FLAGS`` from ``source`` (its package first on
    the path), in a session of its own, logging to ``log_path``; the process and its port
    once it listens. SystemExit if it has not within 30 s."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskrunner", "--port", "0", *flags], cwd=source,
            stdout=log, stderr=log, start_new_session=True,
            env={**os.environ, **(env or {}), "PYTHONPATH": source})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(log_path) as f:
            match = re.search(r"listening on \S+:(\d+)", f.read())
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the instance did not start; see {log_path}")
