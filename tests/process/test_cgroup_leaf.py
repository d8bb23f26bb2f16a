"""cgroup v2's "no internal processes" rule under systemd's ``Delegate=yes``: an instance
alone in its cgroup moves itself into a leaf (``supervisor``) before its cgroup hands the
controllers down to its commands' cgroups (taskrunner/process/cgroups.py, `enter_leaf`).

The move itself is the kernel's and runs here, on the empty cgroup2 mount beside this
machine's cgroup v1 controllers. The whole path (controllers handed down, a command limited)
needs cgroup v2 with its controllers, which this project's machines (cgroup v1, hybrid) do
not have: that test skips here, saying so, and runs as root on a cgroup v2 host.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from helpers import PY, REPO, post_run_blocking, wait_until

MOVE = ("import sys; from taskrunner.process.cgroups import enter_leaf; "
        "print(enter_leaf(sys.argv[1]), flush=True); sys.stdin.read()")


def cgroup2_mount() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    return None


def text(path: str) -> str:
    with open(path) as f:
        return f.read()


def v2_path(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))


@pytest.fixture
def cgroup() -> Iterator[str]:
    """A cgroup of this test's own at the top of the cgroup2 mount, removed (with its
    children, once empty) afterwards."""
    mount = cgroup2_mount()
    if mount is None or os.geteuid() != 0 or not os.access(mount, os.W_OK):
        pytest.skip("needs root and a writable cgroup2 mount")
    path = os.path.join(mount, f"taskrunner-test-leaf-{os.getpid()}-{time.monotonic_ns()}")
    os.mkdir(path)
    try:
        yield path
    finally:
        for directory in sorted((root for root, _, _ in os.walk(path)), reverse=True):
            with contextlib.suppress(OSError):
                wait_until(lambda d=directory: not text(os.path.join(d, "cgroup.procs")), 5)
                os.rmdir(directory)


def start_in(cgroup: str, *argv: str) -> subprocess.Popen[str]:
    # The child enters the cgroup before it execs what it runs: it is born there.
    return subprocess.Popen(
        ["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh", *argv],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_alone_in_its_cgroup_a_process_moves_into_the_leaf(cgroup):
    mount = cgroup2_mount()
    child = start_in(cgroup, PY, "-c", MOVE, cgroup)
    try:
        assert child.stdout.readline().strip() == f"{cgroup}/supervisor"
        assert v2_path(child.pid) == "/" + os.path.relpath(f"{cgroup}/supervisor", mount)
        assert text(f"{cgroup}/cgroup.procs") == ""  # free to hand controllers down
    finally:
        child.communicate("", timeout=10)


def test_with_another_process_in_the_cgroup_it_stays(cgroup):
    other = start_in(cgroup, "sleep", "30")
    try:
        wait_until(lambda: str(other.pid) in text(f"{cgroup}/cgroup.procs"), 5)
        child = start_in(cgroup, PY, "-c", MOVE, cgroup)
        try:
            assert child.stdout.readline().strip() == "None"
            assert not os.path.exists(f"{cgroup}/supervisor")
        finally:
            child.communicate("", timeout=10)
    finally:
        other.kill()
        other.wait(10)


def test_a_delegated_instance_limits_its_commands_from_beside_its_leaf(cgroup, spawn_instance):
    mount = cgroup2_mount()
    assert mount is not None
    available = text(os.path.join(mount, "cgroup.controllers")).split()
    if not {"memory", "pids"} <= set(available):
        pytest.skip("cgroup v2 has no memory and pids controllers here: this machine's are "
                    "cgroup v1 (hybrid); the Delegate=yes path runs on a cgroup v2 host only")
    with open(os.path.join(mount, "cgroup.subtree_control"), "w") as f:
        f.write("+memory +pids")  # what systemd does for a unit with Delegate=yes
    child = spawn_instance(
        "--memory-max", "64", "--pids-max", "32",
        wrapper=["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh"])
    assert v2_path(child.proc.pid).endswith("/supervisor")
    assert "memory" in text(f"{cgroup}/cgroup.subtree_control").split()
    status, body = post_run_blocking(child.port, {"args": ["cat", "/proc/self/cgroup"]})
    assert status == 200, body
    own = "/" + os.path.relpath(cgroup, mount)
    assert f"0::{own}/taskrunner-{child.proc.pid}/" in body["stdout"], body
