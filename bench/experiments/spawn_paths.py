"""posix_spawnp + setsid against Popen(start_new_session=True): spawns/s and parent CPU.

A resident 30 MiB parent, like an instance, spawns /bin/true with piped stdout and stderr
in a session of its own, reads both pipes and reaps it, N times per variant; each variant
twice, interleaved. Both are given the environment explicitly, as the engine does; with
``--inherit-env`` Popen is given none (the child inherits it, and Popen builds nothing).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable

from bench.timing import drain

Start = Callable[[int, int], int]


def run(start: Start, n: int) -> tuple[float, float]:
    """Spawns per second and the parent's CPU per spawn in µs."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid = start(out_w, err_w)
        os.close(out_w)
        os.close(err_w)
        drain(out_r, err_r)
        os.waitpid(pid, 0)
    return n / (time.perf_counter() - wall), (time.process_time() - cpu) / n * 1e6


def posix_spawn(out_w: int, err_w: int) -> int:
    return os.posix_spawnp("/bin/true", ["/bin/true"], os.environ, setsid=True, file_actions=[
        (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)])


def popen(out_w: int, err_w: int, env: dict[str, str] | None = None) -> int:
    p = subprocess.Popen(["/bin/true"], stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                         env=env, close_fds=True, start_new_session=True)
    p.returncode = 0  # reaped by run's waitpid
    return p.pid


def main(argv: list[str]) -> int:
    """Both variants twice, interleaved; one line per run."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment spawn_paths",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("n", nargs="?", type=int, default=2000, metavar="N",
                    help="spawns per variant and run")
    ap.add_argument("--inherit-env", action="store_true",
                    help="Popen without env=: the child inherits the environment")
    args = ap.parse_args(argv)
    n = args.n
    env = None if args.inherit_env else dict(os.environ)

    def popen_env(out_w: int, err_w: int) -> int:
        return popen(out_w, err_w, env)

    ballast = bytes(range(256)) * (30 << 12)  # a resident 30 MiB parent, like an instance
    variants: tuple[tuple[str, Start], ...] = (("posix_spawnp+setsid", posix_spawn),
                                               ("Popen", popen_env))
    for name, start in variants * 2:
        rate, cpu = run(start, n)
        print(f"{name:20} {rate:6.0f} spawns/s {cpu:5.0f} us parent CPU per spawn")
    del ballast
    return 0
