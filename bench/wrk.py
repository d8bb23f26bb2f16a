"""Running wrk: find or install it, run one load with a Lua script, read its result line.

Each Lua script (``post.lua``, ``jobs.lua`` beside this file) ends by printing one line
``WRKJSON {...}``; `run` returns that object plus wrk's own CPU time.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
POST_LUA = HERE / "post.lua"
JOBS_LUA = HERE / "jobs.lua"


def ensure_wrk() -> str:
    """Path of wrk; installs the Debian package when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: wrk is missing; running apt-get install -y wrk", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env,
                       stdout=subprocess.DEVNULL, timeout=600)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("bench: needs wrk on PATH: sudo apt-get install wrk (Debian/Ubuntu)")


def run(url: str, lua: Path, body: str, conns: int, duration: int,
        threads: int = 2) -> dict[str, Any]:
    """One closed-loop wrk run against ``url``; the parsed WRKJSON line plus ``wrk_cpu_s``.

    wrk's ``--timeout`` equals the duration, so a request only counts as a timeout error if
    it is still unanswered when the run ends.
    """
    threads = max(1, min(threads, conns))
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", f"--timeout={duration}s",
           "-s", str(lua), url]
    env = dict(os.environ, WRK_BODY=body)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"wrk still running {duration + 60} s after its start; "
                               "killed") from None
        out.seek(0)
        text = out.read().decode(errors="replace")
    # CPU of the children reaped meanwhile: only wrk (the server under test is not reaped)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for line in text.splitlines():
        if line.startswith("WRKJSON "):
            result: dict[str, Any] = json.loads(line[len("WRKJSON "):])
            result["wrk_cpu_s"] = wrk_cpu
            result["cmd"] = f"WRK_BODY='{body}' " + " ".join(cmd)
            return result
    raise RuntimeError(f"wrk exited {code} without a result:\n"
                       f"{text[-1000:]}")

