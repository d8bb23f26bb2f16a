"""cgroup limits through the process layer's own API: real cgroups, real processes.

Each test makes its own pool under its own parent cgroup and checks at teardown that the
pool left nothing behind (no cgroup, no process), even when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest
from helpers import PY, pid_alive, until, wait_until

from taskrunner.errors import StartupError
from taskrunner.process.cgroup_pool import CgroupPool
from taskrunner.process.cgroup_setup import (
    detect_hierarchy,
    hold_parent,
    sweep_leftovers,
    sweep_stale,
)
from taskrunner.process.cgroups import CgroupLimits
from taskrunner.process.engine import CommandResult, CommandSpec, ProcessEngine
from taskrunner.process.launcher import Launcher

MIB = 1 << 20


def _v1_controllers() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        found = set()
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup":
                found.update(fields[sep + 3].split(","))
    return found


def _v2_controllers() -> tuple[str | None, set[str]]:
    """The cgroup2 mount, and the controllers a new cgroup at its top gets (what the mount's
    root enables for its children)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                try:
                    with open(os.path.join(fields[4], "cgroup.subtree_control")) as control:
                        return fields[4], set(control.read().split())
                except OSError:
                    return fields[4], set()
    return None, set()


MISSING = {"memory", "pids", "cpu"} - _v1_controllers()
# What scripts/install's CI machine has; elsewhere a missing controller or root is a skip.
needs_v1 = pytest.mark.skipif(
    (bool(MISSING) or os.geteuid() != 0) and not os.environ.get("CI"),
    reason=f"needs root and cgroup v1 memory, pids and cpu (missing: {sorted(MISSING)})")
V2_MOUNT, V2_ENABLED = _v2_controllers()
V2_MISSING = sorted({"memory", "pids", "cpu"} - V2_ENABLED)
# This project's machines have the controllers on v1, and an empty cgroup2 mount: there the
# v2 runs are skipped, and they run on a host where v2 has them (most hosts now).
needs_v2 = pytest.mark.skipif(
    bool(V2_MISSING) or os.geteuid() != 0,
    reason=f"needs root and cgroup v2 with memory, pids and cpu enabled under "
           f"{V2_MOUNT or 'a cgroup2 mount (there is none)'} (missing there: {V2_MISSING})")
V2_PARENT = f"/taskrunner-test-{os.getpid()}"
"""On v2 the commands' cgroups go under a parent of their own at the top of the mount (a
cgroup with processes, such as the test's own, cannot hand controllers down)."""


@pytest.fixture
def make_launcher(io_loop) -> Iterator[Callable[..., Launcher]]:
    """A launcher whose commands get cgroups with the given limits (under ``parent``, a v2
    parent made here and removed at the end, or the instance's own)."""
    made: list[tuple[ProcessEngine, CgroupPool]] = []
    given: list[str] = []

    def make(limits: CgroupLimits, parent: str = "") -> Launcher:
        if parent:
            assert V2_MOUNT is not None
            given.append(os.path.join(V2_MOUNT, parent.lstrip("/")))
            os.makedirs(given[-1], exist_ok=True)
        pool = CgroupPool(detect_hierarchy(limits, parent))
        engine = ProcessEngine(max_output=MIB, drain_grace=5.0)
        made.append((engine, pool))
        return Launcher(engine, cgroups=pool)

    yield make
    for engine, pool in made:
        engine.kill_all()
        io_loop.run_sync(lambda engine=engine: engine.wait_all(10))
        parents = list(pool.hierarchy.parents.values())
        pool.close()
        engine.close()
        for path in given:  # not the instance's: kept by the pool, empty now
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(path)
        assert not [p for p in parents if os.path.exists(p)], "parent cgroups left behind"


@pytest.fixture(params=[pytest.param(1, marks=needs_v1, id="v1"),
                        pytest.param(2, marks=needs_v2, id="v2")])
def version(request: pytest.FixtureRequest) -> int:
    """The cgroup version a test of limits runs on: each where its controllers are."""
    return request.param


@pytest.fixture
def limited(make_launcher, version) -> Callable[[CgroupLimits], Launcher]:
    """`make_launcher` on the hierarchy of ``version``."""
    def make(limits: CgroupLimits) -> Launcher:
        launcher = make_launcher(limits, V2_PARENT if version == 2 else "")
        assert launcher.cgroups is not None
        assert launcher.cgroups.hierarchy.version == version
        return launcher

    return make


async def run(launcher: Launcher, args: list[str], timeout: float = 20) -> CommandResult:
    command = await launcher.launch(CommandSpec(args=args, timeout=timeout))
    return await command.result


def children(pool: CgroupPool) -> list[str]:
    """The per-command cgroups under the pool's parents, in every hierarchy."""
    return sorted(f"{key}/{name}" for key, parent in pool.hierarchy.parents.items()
                  for name in os.listdir(parent) if os.path.isdir(os.path.join(parent, name)))


@pytest.mark.gen_test(timeout=60)
async def test_over_its_memory_limit_a_command_is_killed_and_reported(limited):
    launcher = limited(CgroupLimits(memory_max=64 * MIB))
    result = await run(launcher, [PY, "-c", "x = bytearray(200 << 20); print('survived')"])
    assert result.oom_killed
    assert result.status == -signal.SIGKILL
    assert "survived" not in result.stdout
    # Under the limit the next command runs, and is not reported as killed.
    result = await run(launcher, [PY, "-c", "x = bytearray(16 << 20); print('ok')"])
    assert (result.status, result.stdout, result.oom_killed) == (0, "ok\n", False)


@pytest.mark.gen_test(timeout=60)
async def test_a_killed_child_counts_even_when_the_main_process_survives(limited):
    launcher = limited(CgroupLimits(memory_max=64 * MIB))
    script = ("import subprocess, sys\n"
              "p = subprocess.run([sys.executable, '-c', 'x = bytearray(200 << 20)'])\n"
              "print(p.returncode)\n")
    result = await run(launcher, [PY, "-c", script])
    assert (result.status, result.stdout, result.oom_killed) == (0, "-9\n", True)


# A fork bomb bounded in attempts: each child leaves the group (setsid) and sleeps; the
# parent reports how many forks the kernel allowed and the pids it got.
FORKS = """
import os, sys, time
pids, refused = [], 0
for _ in range(200):
    try:
        pid = os.fork()
    except BlockingIOError:
        refused += 1
        continue
    if pid == 0:
        os.setsid()
        time.sleep(1000)
        os._exit(0)
    pids.append(pid)
print(len(pids), refused, *pids)
"""


@pytest.mark.gen_test(timeout=60)
async def test_a_fork_bomb_is_held_to_its_pids_limit_and_nothing_is_left(limited):
    launcher = limited(CgroupLimits(pids_max=20))
    result = await run(launcher, [PY, "-c", FORKS])
    made, refused, *pids = (int(word) for word in result.stdout.split())
    assert result.status == 0, result.stderr
    assert 0 < made < 20 and refused == 200 - made
    # Every child left the group with setsid: the cgroup killed them all at exit.
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids))
    assert launcher.cgroups is not None
    assert launcher.cgroups.idle <= 1


@pytest.mark.gen_test(timeout=60)
async def test_a_busy_loop_gets_its_share_of_cpu(limited, version):
    launcher = limited(CgroupLimits(cpu_max=0.2))
    script = ("import os, time\n"
              "end = time.monotonic() + 2\n"
              "while time.monotonic() < end: pass\n"
              "t = os.times()\n"
              "print(t.user + t.system)\n"
              f"key = {'cpu' if version == 1 else ''!r}\n"
              f"mount = {'/sys/fs/cgroup/cpu' if version == 1 else V2_MOUNT!r}\n"
              "group = [l for l in open('/proc/self/cgroup') if l.split(':')[1] == key][0]\n"
              "stat = open(mount + group.split(':', 2)[2].strip() + '/cpu.stat')\n"
              "print(dict(line.split() for line in stat)['nr_throttled'])\n")
    result = await run(launcher, [PY, "-c", script])
    assert result.status == 0, result.stderr
    cpu, throttled = result.stdout.split()
    # About 0.4 s of CPU in 2 s; without the limit it would be up to 2 s (loose bounds: the
    # machine is shared, and on a busy one an unlimited loop gets less than a CPU too, so
    # the kernel's own count of the times it held the loop back is checked as well).
    assert 0.1 < float(cpu) < 0.9, result.stdout
    assert int(throttled) > 0


@pytest.mark.gen_test(timeout=60)
async def test_a_setsid_escapee_dies_at_exit_and_at_timeout(limited):
    launcher = limited(CgroupLimits(pids_max=50))
    result = await run(launcher, ["sh", "-c", "setsid sleep 1000 & echo $!"])
    escapee = int(result.stdout)
    assert result.status == 0
    assert wait_until(lambda: not pid_alive(escapee))
    # The escapee holds the output pipes: without the cgroup the result would wait for the
    # engine's drain_grace (5 s here); with it, the pipes close when it dies.
    assert result.duration < 4
    result = await run(launcher, ["sh", "-c", "setsid sleep 1000 & echo $!; sleep 1000"],
                       timeout=0.5)
    assert result.timed_out
    escapee = int(result.stdout)
    assert wait_until(lambda: not pid_alive(escapee))


@pytest.mark.gen_test(timeout=60)
async def test_cancel_kills_the_whole_tree(limited):
    launcher = limited(CgroupLimits(pids_max=50))
    output: list[bytes] = []
    command = await launcher.launch(
        CommandSpec(args=["sh", "-c", "setsid sleep 1000 & echo $!; exec sleep 1000"],
                    timeout=30),
        lambda _stream, chunk: output.append(chunk))
    await until(lambda: b"\n" in b"".join(output))
    escapee = int(b"".join(output))
    assert pid_alive(escapee)
    command.cancel()
    result = await command.result
    assert result.cancelled
    assert wait_until(lambda: not pid_alive(escapee))


@pytest.mark.gen_test(timeout=60)
async def test_each_command_is_in_its_own_cgroups_and_none_is_left_after(limited, version):
    launcher = limited(CgroupLimits(memory_max=64 * MIB, pids_max=50, cpu_max=1))
    pool = launcher.cgroups
    assert pool is not None
    result = await run(launcher, ["cat", "/proc/self/cgroup"])
    lines = dict(line.split(":", 2)[1:] for line in result.stdout.splitlines())
    name = f"{os.getpid()}-0"
    parent = f"/taskrunner-{os.getpid()}" if version == 1 else V2_PARENT
    for key in ("memory", "pids", "cpu", "freezer") if version == 1 else ("",):
        assert lines[key].endswith(f"{parent}/{name}"), lines
    # This process (the instance) stays where it was.
    with open("/proc/self/cgroup") as f:
        assert parent not in f.read()
    # Two at once get two cgroups; afterwards only the clean ones wait, empty, for reuse.
    first = await launcher.launch(CommandSpec(args=["sleep", "0.2"], timeout=5))
    second = await launcher.launch(CommandSpec(args=["sleep", "0.2"], timeout=5))
    await first.result
    await second.result
    assert pool.made == 2 and pool.idle == 2
    for path in children(pool):
        parent, _, cg = path.partition("/")
        with open(os.path.join(pool.hierarchy.parents[parent], cg, "cgroup.procs")) as f:
            assert f.read() == ""
    # An OOM-killed command's cgroup is not reused: it is removed.
    before = children(pool)
    result = await run(launcher, [PY, "-c", "x = bytearray(200 << 20)"])
    assert result.oom_killed
    assert pool.made == 2 and pool.idle == 1
    assert len(children(pool)) == len(before) // 2
    pool.close()
    if version == 1:  # its own parents go too
        assert not any(os.path.exists(p) for p in pool.hierarchy.parents.values())
    else:  # a given parent, as on v2 here, is kept, empty
        assert children(pool) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make cgroups")
@pytest.mark.gen_test(timeout=60)
async def test_v2_places_kills_and_removes_on_a_real_cgroup2_mount(make_launcher):
    # This machine's cgroup2 mount has no controllers: limits cannot be tested on it, but
    # the v2 placement (the exec wrapper), cgroup.kill and removal can.
    launcher = make_launcher(CgroupLimits())
    pool = launcher.cgroups
    assert pool is not None
    if pool.hierarchy.version != 2:
        pytest.skip("no cgroup2 mount here")
    result = await run(launcher,
                       ["sh", "-c", "setsid sleep 1000 & echo $!; cat /proc/self/cgroup"])
    escapee, *lines = result.stdout.splitlines()
    assert f"0::/taskrunner-{os.getpid()}/{os.getpid()}-0" in lines
    assert wait_until(lambda: not pid_alive(int(escapee)))
    # A missing program is still a clean SpawnError, not the wrapper's exit status.
    from taskrunner.errors import SpawnError

    with pytest.raises(SpawnError):
        await run(launcher, ["no-such-program-here"])


@needs_v1
def test_startup_without_the_controller_is_one_line(tmp_path):
    # A real machine without the memory controller: this one, in a mount namespace where it
    # is unmounted.
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'umount /sys/fs/cgroup/memory && exec "$@"', "sh",
         PY, "-m", "taskrunner", "--port", "0", "--memory-max", "64"],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "memory" in lines[0] and "cgroup" in lines[0]


def test_detect_refuses_what_is_not_mounted(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
    own = tmp_path / "cgroup"
    own.write_text("0::/\n")
    with pytest.raises(StartupError, match="pids"):
        detect_hierarchy(CgroupLimits(pids_max=5), mountinfo=str(mountinfo), own=str(own))


@needs_v1
@pytest.mark.gen_test(timeout=60)
async def test_a_given_parent_holds_the_commands_and_is_kept(io_loop):
    parent = f"/taskrunner-test-{os.getpid()}"
    hierarchy = detect_hierarchy(CgroupLimits(pids_max=10), parent)
    pool = CgroupPool(hierarchy)
    engine = ProcessEngine(max_output=MIB)
    try:
        result = await run(Launcher(engine, cgroups=pool), ["cat", "/proc/self/cgroup"])
        assert f"pids:{parent}/{os.getpid()}-0" in result.stdout
        pool.close()
        # Not made by this instance for itself: kept, and empty.
        assert os.listdir(hierarchy.parents["pids"]) and children(pool) == []
    finally:
        engine.close()
        pool.close()
        for path in hierarchy.parents.values():
            os.rmdir(path)


def test_bad_cgroup_settings_are_refused():
    from taskrunner.config import Config

    for bad in ({"pids_max": 1}, {"pids_max": -1}, {"memory_max": -5}, {"cpu_max": -0.5},
                {"cpu_max": float("nan")}, {"cpu_max": float("inf")}, {"cpu_max": 0.001},
                {"cgroup_parent": "relative/path"}, {"cgroup_parent": "/a/../b"}):
        with pytest.raises(ValueError):
            Config(**bad)


@needs_v1
def test_empty_cgroups_of_an_instance_no_longer_running_are_swept_at_startup(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"/sys/fs/cgroup/pids/taskrunner-{dead.pid}"
    os.makedirs(f"{stale}/{dead.pid}-0")
    os.makedirs(f"{stale}/{dead.pid}-1")
    try:
        assert sweep_leftovers() >= 3
        assert not os.path.exists(stale)
    finally:
        for path in (f"{stale}/{dead.pid}-0", f"{stale}/{dead.pid}-1", stale):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(path)


def _own_dirs(name: str) -> list[str]:
    """``name`` beside this process's own cgroup in each hierarchy taskrunner uses."""
    with open("/proc/self/cgroup") as f:
        homes = {controllers: path for _, controllers, path in
                 (line.rstrip("\n").split(":", 2) for line in f)}
    return [os.path.join(f"/sys/fs/cgroup/{key}", homes[key].lstrip("/"), name)
            for key in ("memory", "pids", "cpu", "freezer") if key in homes]


@needs_v1
def test_a_killed_instances_cgroups_are_removed_by_the_next_even_without_limits(
        spawn_instance):
    killed = spawn_instance("--memory-max", "64", "--pids-max", "50", "--cpu-max", "1")
    dirs = _own_dirs(f"taskrunner-{killed.proc.pid}")
    assert all(os.path.isdir(d) for d in dirs), dirs
    try:
        killed.proc.kill()  # kill -9: it removes nothing
        killed.wait()
        assert all(os.path.isdir(d) for d in dirs), "kill -9 left nothing to sweep"
        spawn_instance()  # no cgroup limits at all
        assert not [d for d in dirs if os.path.exists(d)]
    finally:
        for path in dirs:
            with contextlib.suppress(OSError):
                for name in os.listdir(path):
                    if os.path.isdir(os.path.join(path, name)):
                        os.rmdir(os.path.join(path, name))
                os.rmdir(path)


@needs_v1
def test_a_live_instances_cgroups_stay_even_when_its_pid_looks_dead(spawn_instance):
    # As an instance of another PID namespace looks from here: a pid nothing has now.
    dead = subprocess.Popen(["true"])
    dead.wait()
    dirs = _own_dirs(f"taskrunner-{dead.pid}")
    locks = [hold_parent(path) for path in dirs]  # what that live instance holds
    try:
        os.mkdir(f"{dirs[0]}/{dead.pid}-0")  # an idle cgroup of its pool
        spawn_instance()
        sweep_leftovers()
        assert all(os.path.isdir(d) for d in dirs)
        assert os.path.isdir(f"{dirs[0]}/{dead.pid}-0")
        for fd in locks:  # it has gone now
            os.close(fd)
        locks.clear()
        assert sweep_leftovers() == len(dirs) + 1
        assert not [d for d in dirs if os.path.exists(d)]
    finally:
        for fd in locks:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.rmdir(f"{dirs[0]}/{dead.pid}-0")
        for path in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(path)


@needs_v1
def test_two_pools_of_one_process_hold_a_parent_each():
    first = detect_hierarchy(CgroupLimits(pids_max=10))
    try:
        second = detect_hierarchy(CgroupLimits(pids_max=10))
        try:
            assert first.parents["pids"].endswith(f"/taskrunner-{os.getpid()}")
            assert second.parents["pids"].endswith(f"/taskrunner-{os.getpid()}-1")
            assert sweep_leftovers() == 0  # both held
        finally:
            second.close()
        assert os.path.isdir(first.parents["pids"])
    finally:
        first.close()
    assert not os.path.exists(first.parents["pids"])


@needs_v1
@pytest.mark.gen_test(timeout=60)
async def test_cgroups_removed_by_hand_are_made_again(make_launcher):
    launcher = make_launcher(CgroupLimits(pids_max=10))
    pool = launcher.cgroups
    assert pool is not None
    assert (await run(launcher, ["true"])).status == 0
    for parent in pool.hierarchy.parents.values():  # what an operator's cleanup might do
        for name in os.listdir(parent):
            if os.path.isdir(os.path.join(parent, name)):
                os.rmdir(os.path.join(parent, name))
        os.rmdir(parent)
    result = await run(launcher, ["cat", "/proc/self/cgroup"])
    assert result.status == 0 and f"/taskrunner-{os.getpid()}/" in result.stdout


@needs_v1
def test_a_limit_the_kernel_refuses_is_a_one_line_startup_error():
    # A CPU quota beyond the kernel's largest: refused when written, at startup.
    proc = subprocess.Popen([PY, "-m", "taskrunner", "--port", "0", "--cpu-max", "1e9"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # it started after all: stop it, and what it made
            proc.kill()
            proc.wait()
            for key in ("cpu", "freezer"):
                sweep_stale(f"/sys/fs/cgroup/{key}")
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cgroup limits cannot be applied" in lines[0], err
    assert not os.path.exists(f"/sys/fs/cgroup/cpu/taskrunner-{proc.pid}")
