"""--sandbox through the launcher and the engine, with real bubblewrap: what a command can
see, write and reach, and that nothing of it outlives it."""

import dataclasses
import os
import pwd
import shutil
import socket
import subprocess
import uuid

import pytest
from conftest import processes_with, unique_sleep
from helpers import PY, REPO, wait_until

from taskrunner.config import Config
from taskrunner.errors import SpawnError, StartupError
from taskrunner.process.containment import containment_from_config
from taskrunner.process.engine import CommandSpec, ProcessEngine
from taskrunner.process.launcher import Launcher
from taskrunner.process.sandbox import WORK_PARENT, sees

BWRAP = shutil.which("bwrap")
# scripts/install brings bubblewrap: under CI its absence is a failure, not a skip.
pytestmark = pytest.mark.skipif(BWRAP is None and not os.environ.get("CI"),
                                reason="bubblewrap (bwrap) is not installed: scripts/install")
is_root = os.geteuid() == 0
PYTHON = os.path.realpath(PY)  # the interpreter itself, not the venv under /tmp


class Sandboxed:
    """A launcher with --sandbox on a real engine; everything closed at teardown."""

    def __init__(self, **changes):
        self.config = dataclasses.replace(Config(port=0), sandbox=True, **changes)
        self.containment = containment_from_config(self.config, os.environ)
        self.engine = ProcessEngine(max_output=1 << 20,
                                    base_env={**os.environ, **self.containment.env})
        self.launcher = Launcher(self.engine, containment=self.containment)

    @property
    def work_root(self):
        return self.containment.sandbox.work_root

    async def run(self, *args, timeout=30.0, cwd=None):
        command = await self.launcher.launch(CommandSpec(list(args), timeout, cwd=cwd))
        return await command.result

    def close(self):
        self.engine.close()
        self.containment.close()


@pytest.fixture
def sandboxed():
    made = []

    def make(**changes):
        made.append(Sandboxed(**changes))
        return made[-1]

    yield make
    for box in made:
        box.close()
        assert not os.path.exists(box.work_root)


@pytest.mark.gen_test
async def test_writes_under_usr_and_home_fail_and_the_work_dir_is_the_cwd(sandboxed):
    box = sandboxed()
    result = await box.run("sh", "-c", "touch /usr/x; touch /home/x; touch /etc/x; "
                           "echo made > ./file && pwd && cat file")
    assert result.stderr.count("Read-only file system") == 3, result.stderr
    work, made = result.stdout.split()
    assert made == "made"
    assert os.path.dirname(work) == box.work_root
    assert not os.path.exists("/usr/x") and not os.path.exists("/home/x")
    # The work directory (it held a file) is removed once the command has ended.
    assert wait_until(lambda: not os.path.exists(work), 10)
    result = await box.run("pwd")
    assert result.stdout.strip() != work  # each command gets a fresh one
    assert not os.path.exists(result.stdout.strip())  # an empty one is removed at once


@pytest.mark.gen_test
async def test_tmp_is_empty_private_and_bounded(sandboxed):
    box = sandboxed(sandbox_tmp_size=1)
    name = f"taskrunner-sandbox-test-{uuid.uuid4().hex}"
    result = await box.run("sh", "-c", f"ls -A /tmp /dev/shm /run /var/tmp; echo secret > "
                           f"/tmp/{name} && cat /tmp/{name}")
    listing = result.stdout.split("\n")
    assert [line for line in listing if line and not line.endswith(":")
            and line != "secret" and not line.startswith("taskrunner-sandbox-")] == []
    assert "secret" in listing and result.status == 0, result
    assert not os.path.exists(f"/tmp/{name}")  # not on the host
    result = await box.run("ls", "-A", "/tmp")
    assert (result.status, result.stdout) == (0, "")  # nor seen by the next command
    result = await box.run("sh", "-c", "echo $TMPDIR")
    assert result.stdout == "/tmp\n"  # whatever the instance's is: that one is hidden
    result = await box.run("sh", "-c", "head -c 2097152 /dev/zero > /tmp/big; "
                           "head -c 2097152 /dev/zero > /dev/shm/big")
    assert result.stderr.count("No space left on device") == 2, result.stderr


@pytest.mark.gen_test
async def test_the_command_sees_only_its_own_processes(sandboxed):
    box = sandboxed()
    result = await box.run("sh", "-c", "ps -e -o pid=,comm=; ls /proc | grep -c '^[0-9]'")
    lines = result.stdout.splitlines()
    names = sorted(line.split()[1] for line in lines[:-1])
    shell = os.path.basename(os.path.realpath(shutil.which("sh")))  # the real file runs
    assert names == sorted(["bwrap", "ps", shell]), result.stdout
    assert int(lines[-1]) <= 4  # bwrap, sh, ls, grep: no host process
    result = await box.run("hostname")
    assert result.stdout == "sandbox\n"


@pytest.mark.gen_test
@pytest.mark.parametrize("net", [False, True], ids=["no-net", "sandbox-net"])
async def test_a_local_listener_is_reachable_only_with_sandbox_net(sandboxed, net):
    box = sandboxed(sandbox_net=net)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        result = await box.run(PYTHON, "-c", "import socket\n"
                               f"socket.create_connection(('127.0.0.1', {port}), 5).close()\n"
                               "print('connected')")
    if net:
        assert (result.status, result.stdout) == (0, "connected\n"), result.stderr
    else:
        assert result.status == 1 and "ConnectionRefusedError" in result.stderr, result.stderr


@pytest.mark.gen_test
async def test_setsid_and_double_fork_escapees_die_with_the_command(sandboxed):
    box = sandboxed()
    single, double = unique_sleep(), unique_sleep()
    result = await box.run("sh", "-c", f"setsid sleep {single} & "
                           f"(setsid sh -c 'sleep {double} &' &); exit 0")
    assert result.status == 0
    assert result.duration < 5  # the engine did not wait for pipes held by escapees
    assert processes_with(f"sleep {single}") == [] and processes_with(f"sleep {double}") == []


@pytest.mark.gen_test
async def test_on_timeout_and_cancel_the_whole_sandbox_dies(sandboxed):
    box = sandboxed()
    escapee, main = unique_sleep(), unique_sleep()
    result = await box.run("sh", "-c", f"setsid sleep {escapee} & sleep {main}", timeout=0.5)
    assert result.timed_out
    assert wait_until(lambda: not processes_with(escapee) and not processes_with(main), 5)
    escapee = unique_sleep()
    command = await box.launcher.launch(CommandSpec(
        ["sh", "-c", f"setsid sleep {escapee} & echo started; wait"], 60))
    assert wait_until(lambda: processes_with(escapee), 5)
    command.cancel()
    result = await command.result
    assert result.cancelled
    assert wait_until(lambda: not processes_with(escapee), 5)


@pytest.mark.gen_test
async def test_a_signal_inside_is_reported_as_a_shell_would_and_a_timeout_as_before(sandboxed):
    box = sandboxed()
    result = await box.run("sh", "-c", "kill -USR1 $$")
    assert result.status == 128 + 10  # bubblewrap's status, 128 + SIGUSR1
    result = await box.run("sleep", "30", timeout=0.2)
    assert result.timed_out and result.status == -9


@pytest.mark.gen_test
async def test_the_limits_still_bind_inside_the_sandbox(sandboxed):
    box = sandboxed(limit_as=128, limit_fsize=1)
    result = await box.run(PYTHON, "-c", "x = bytearray(1 << 30)")
    assert result.status == 1 and "MemoryError" in result.stderr
    result = await box.run("dd", "if=/dev/zero", "of=big", "bs=1M", "count=4")
    assert result.status == 128 + 25  # SIGXFSZ, as bubblewrap reports a signal


@pytest.mark.gen_test
async def test_binds_at_the_same_path_read_only_or_writable(sandboxed, tmp_path):
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "data").write_text("shared\n")
    box = sandboxed(sandbox_bind_ro=(str(ro),), sandbox_bind=(str(rw),))
    result = await box.run("sh", "-c", f"cat {ro}/data; touch {ro}/new; echo out > {rw}/new; "
                           f"ls -A {tmp_path}")
    assert result.stdout.startswith("shared\n"), result
    assert "Read-only file system" in result.stderr
    assert (rw / "new").read_text() == "out\n" and not (ro / "new").exists()
    # The rest of /tmp stays hidden: only the bound paths are there.
    assert sorted(result.stdout.split()[1:]) == ["ro", "rw"]
    result = await box.run("pwd", cwd=str(rw))
    assert result.stdout == f"{rw}\n"
    result = await box.run("pwd", cwd=os.path.relpath(rw))  # relative to the instance's
    assert result.stdout == f"{rw}\n"


@pytest.mark.gen_test
async def test_a_program_or_cwd_the_sandbox_does_not_see_is_refused(sandboxed, tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    box = sandboxed()
    with pytest.raises(SpawnError, match="not visible inside the sandbox"):
        await box.run(str(script))
    with pytest.raises(SpawnError, match=r"working directory .* not visible"):
        await box.run("true", cwd=str(tmp_path))
    box = sandboxed(sandbox_bind_ro=(str(tmp_path),))
    result = await box.run(str(script))
    assert result.stdout == "hi\n"


@pytest.mark.skipif(not is_root, reason="--user needs root")
@pytest.mark.gen_test
async def test_with_user_the_command_drops_inside_and_still_writes_its_dirs(sandboxed):
    box = sandboxed(user="nobody")
    result = await box.run("sh", "-c", "id -u; grep CapEff /proc/self/status; "
                           "touch ./a /tmp/a /dev/shm/a && echo wrote")
    uid, caps, wrote = result.stdout.splitlines()
    assert int(uid) == pwd.getpwnam("nobody").pw_uid
    assert caps.split()[1] == "0000000000000000"
    assert wrote == "wrote", result.stderr


@pytest.mark.skipif(not is_root, reason="root runs no capability: checked as root only")
@pytest.mark.gen_test
async def test_as_root_the_command_has_no_capability_and_cannot_remount(sandboxed):
    box = sandboxed()
    result = await box.run("sh", "-c", "grep CapEff /proc/self/status; "
                           "mount -o remount,rw / && touch /usr/x")
    assert "0000000000000000" in result.stdout
    assert result.status != 0 and not os.path.exists("/usr/x")


def test_sees_the_deepest_mount_point():
    shadowed = ("/dev", "/proc", "/tmp", "/run", WORK_PARENT)
    assert sees("/usr/bin/true", shadowed, ())
    assert not sees("/tmp/x", shadowed, ())
    assert sees("/tmpx", shadowed, ())
    assert sees("/tmp/data/x", shadowed, ("/tmp/data",))
    assert not sees("/tmp/database", shadowed, ("/tmp/data",))


def test_a_bind_that_does_not_exist_stops_startup():
    config = dataclasses.replace(Config(port=0), sandbox=True,
                                 sandbox_bind=("/no/such/path/x",))
    with pytest.raises(StartupError, match="--sandbox-bind '/no/such/path/x'"):
        containment_from_config(config, os.environ)


def test_without_bwrap_on_path_startup_stops(tmp_path):
    config = dataclasses.replace(Config(port=0), sandbox=True)
    with pytest.raises(StartupError, match="needs bubblewrap"):
        containment_from_config(config, {"PATH": str(tmp_path)})


def test_sandbox_flags_without_sandbox_are_refused():
    with pytest.raises(ValueError, match="need sandbox"):
        Config(sandbox_net=True)
    with pytest.raises(ValueError, match="normalised absolute path"):
        Config(sandbox=True, sandbox_bind=("relative",))


@pytest.mark.skipif(not is_root, reason="needs root to make the user namespace it runs in")
def test_where_bubblewrap_cannot_make_namespaces_the_instance_refuses_to_start():
    """An instance without capabilities, in a user namespace that may make no other: bwrap
    fails for real, and the instance says so in one line instead of running unsandboxed."""
    script = ("echo 0 > /proc/sys/user/max_user_namespaces && "
              "exec setpriv --bounding-set=-all --inh-caps=-all "
              f"{PY} -m taskrunner --port 0 --sandbox")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("taskrunner: --sandbox: bubblewrap does not work here, "
                                "refusing to run commands unsandboxed: bwrap: "), proc.stderr
    assert "listening" not in proc.stderr


@pytest.mark.gen_test(timeout=30)
async def test_a_retired_sandbox_goes_when_its_last_command_leaves(sandboxed):
    box = sandboxed()
    sandbox = box.containment.sandbox
    first = box.work_root
    command = await box.launcher.launch(CommandSpec(
        ["sh", "-c", "sleep 0.5; echo kept > out && cat out"], 30.0))
    box.containment.retire()  # a caller replaced on a reload while its command runs
    assert os.path.isdir(first)
    assert (await command.result).stdout == "kept\n"
    assert wait_until(lambda: not os.path.exists(first)) and not sandbox.held
    # A request that took the old caller before the reload still runs, in a root of its own
    # that goes when it leaves.
    result = await box.run("sh", "-c", "pwd")
    assert result.status == 0 and not result.stdout.startswith(first)
    assert wait_until(lambda: not sandbox.held)
    assert not os.path.exists(os.path.dirname(result.stdout.strip()))
