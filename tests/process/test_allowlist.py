"""--allow: only the listed programs run, by their real path; tricks get a 403."""

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

import pytest
from conftest import with_config
from helpers import PY, REPO, post_run_blocking, until

from taskrunner.config import Config

ECHO = os.path.realpath(shutil.which("echo"))
DASH = os.path.realpath(shutil.which("dash") or shutil.which("sh"))
# dash prints PWNED; echo prints its arguments, in which the word is split.
FLIP_ARGS = ["-c", "printf '%s%s\\n' PW NED"]


@pytest.fixture
def config():
    return Config(port=0, grace=2.0, allow=("echo", PY))


@pytest.mark.gen_test
async def test_an_allowed_program_runs_by_name_and_by_path(instance):
    for program in ("echo", ECHO, shutil.which("echo")):
        code, body = await instance.run({"args": [program, "ok"]})
        assert code == 200, body
        assert body["stdout"] == "ok\n"


@pytest.mark.gen_test
async def test_another_program_gets_403_naming_it(instance):
    code, body = await instance.run({"args": ["ls", "/"]})
    assert code == 403
    assert body["error"] == "program_not_allowed"
    assert "'ls'" in body["message"]


@pytest.mark.gen_test
async def test_the_403_says_what_a_name_resolves_to_only_when_it_differs(instance):
    ls = os.path.realpath(shutil.which("ls"))
    code, body = await instance.run({"args": [ls]})
    assert (code, body["message"]) == (403, f"program {ls!r} is not allowed on this instance")
    code, body = await instance.run({"args": ["ls"]})
    assert body["message"] == f"program 'ls' is not allowed on this instance " \
                              f"(it resolves to {ls!r})"


@pytest.mark.gen_test
async def test_sh_c_does_not_get_around_it(instance):
    code, body = await instance.run({"args": ["sh", "-c", "echo hi"]})
    assert code == 403 and "'sh'" in body["message"]


@pytest.mark.gen_test
async def test_a_copy_named_like_an_allowed_program_is_refused(instance, tmp_path):
    fake = tmp_path / "echo"
    shutil.copy(shutil.which("ls"), fake)
    code, body = await instance.run({"args": ["./echo"], "cwd": str(tmp_path)})
    assert code == 403 and "'./echo'" in body["message"]
    code, body = await instance.run({"args": [str(fake)]})
    assert code == 403


@pytest.mark.gen_test
async def test_a_symlink_counts_by_what_it_points_to(instance, tmp_path):
    (tmp_path / "echo").symlink_to(shutil.which("ls"))
    code, body = await instance.run({"args": [str(tmp_path / "echo")]})
    assert code == 403
    assert os.path.realpath(shutil.which("ls")) in body["message"]
    (tmp_path / "say").symlink_to(ECHO)
    code, body = await instance.run({"args": ["./say", "linked"], "cwd": str(tmp_path)})
    assert code == 200 and body["stdout"] == "linked\n"


@pytest.mark.gen_test
async def test_a_callers_path_cannot_smuggle_a_program_in(instance, tmp_path):
    shutil.copy(shutil.which("ls"), tmp_path / "echo")
    code, body = await instance.run({"args": ["echo", "x"], "env": {"PATH": str(tmp_path)}})
    assert code == 403 and str(tmp_path) in body["message"]
    # A PATH that leads to the real, allowed file is fine: it grants nothing new.
    code, _ = await instance.run({"args": ["echo", "x"],
                                  "env": {"PATH": os.path.dirname(ECHO)}})
    assert code == 200


@pytest.mark.gen_test
async def test_a_relative_path_entry_is_relative_to_the_commands_cwd(instance, tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "say").symlink_to(ECHO)
    code, body = await instance.run({"args": ["say", "here"], "cwd": str(tmp_path),
                                     "env": {"PATH": "bin"}})
    assert (code, body.get("stdout")) == (200, "here\n"), body


@pytest.mark.gen_test
async def test_a_program_that_does_not_exist_is_not_allowed(instance):
    code, _ = await instance.run({"args": ["no-such-program-xyz"]})
    assert code == 403


# What the kernel was asked to execute: argv[0] (the file it names is /proc/self/exe, which
# is the real file whatever name led to it).
SHOW_EXEC = ("import os; print(os.readlink('/proc/self/exe')); "
             "print(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[0].decode())")


@pytest.mark.gen_test
async def test_the_real_path_is_what_runs(instance, tmp_path):
    (tmp_path / "py").symlink_to(PY)
    for program in (PY, str(tmp_path / "py")):
        code, body = await instance.run({"args": [program, "-c", SHOW_EXEC]})
        assert code == 200, body
        assert body["stdout"].splitlines() == [os.path.realpath(PY)] * 2


@pytest.mark.gen_test
@with_config(allow=(PY,), limit_nofile=1024)
async def test_through_the_wrappers_the_real_path_is_what_runs(instance, tmp_path):
    await runs_by_its_real_path(instance, tmp_path, PY)


@pytest.mark.skipif(os.geteuid() != 0, reason="--user needs root")
class TestAsAnotherUser:
    """--user nobody, with an interpreter nobody may run: the checkout's may be out of its
    reach (a clone in root's home)."""

    @pytest.fixture
    def config(self, reachable_runtime):
        return Config(port=0, grace=2.0, allow=(reachable_runtime.python,), user="nobody")

    @pytest.mark.gen_test
    async def test_through_the_wrappers_the_real_path_is_what_runs(self, instance, tmp_path,
                                                                   reachable_runtime):
        await runs_by_its_real_path(instance, tmp_path, reachable_runtime.python)


async def runs_by_its_real_path(instance, tmp_path, python):
    """A symlink to ``python`` runs as ``python``'s real path: both what the kernel
    executed and the program's own argv[0] say so."""
    tmp_path.chmod(0o755)
    (tmp_path / "py").symlink_to(python)
    code, body = await instance.run({"args": [str(tmp_path / "py"), "-c", SHOW_EXEC]})
    assert code == 200, body
    assert body["stdout"].splitlines() == [os.path.realpath(python)] * 2


@pytest.mark.gen_test
@with_config(allow=("echo",), limit_as=512)
async def test_with_a_wrapper_a_missing_cwd_is_a_422_naming_the_program(instance, tmp_path):
    code, body = await instance.run({"args": ["echo"], "cwd": str(tmp_path / "absent")})
    assert (code, body["message"]) == (
        422, f"cannot start 'echo': working directory {str(tmp_path / 'absent')!r}: "
             "No such file or directory")


@pytest.mark.gen_test(timeout=30)
@with_config(allow=("echo", "sleep"), max_running=1)
async def test_a_queued_run_runs_the_file_checked_before_it_waited(instance, tmp_path):
    """The name is not looked up again when the slot comes: a symlink flipped meanwhile
    from an allowed program to a forbidden one changes nothing."""
    prog = tmp_path / "prog"
    prog.symlink_to(ECHO)
    blocker = await instance.request("POST", "/jobs", {"args": ["sleep", "30"]})
    assert blocker.code == 202, blocker.body
    queued = asyncio.ensure_future(instance.run({"args": [str(prog), *FLIP_ARGS]}))
    await until(lambda: instance.ctx.launcher.admission.queued == 1)
    (tmp_path / "next").symlink_to(DASH)
    (tmp_path / "next").rename(prog)
    job_id = json.loads(blocker.body)["id"]
    assert (await instance.request("DELETE", f"/jobs/{job_id}")).code == 200
    code, body = await queued
    assert "PWNED" not in body.get("stdout", ""), body
    assert (code, body["stdout"]) == (200, "-c printf '%s%s\\n' PW NED\n")


@pytest.mark.gen_test(timeout=30)
@with_config(allow=("echo", "sleep"), max_running=1)
async def test_a_forbidden_program_is_403_at_once_even_when_it_would_queue(instance):
    blocker = asyncio.ensure_future(instance.run({"args": ["sleep", "30"]}))
    await until(lambda: instance.ctx.engine.running == 1)
    code, body = await instance.run({"args": ["ls", "/"]}, timeout=10)
    assert (code, body["error"]) == (403, "program_not_allowed")
    assert not blocker.done()  # it was refused while the slot was still taken
    instance.ctx.engine.kill_all()
    assert (await blocker)[0] == 200


@pytest.mark.gen_test
async def test_a_forbidden_program_is_403_as_a_job_and_no_job_is_made(instance):
    for args in (["ls", "/"], ["sh", "-c", "echo hi"]):
        response = await instance.request("POST", "/jobs", {"args": args})
        assert response.code == 403, response.body
        assert json.loads(response.body)["error"] == "program_not_allowed"
    response = await instance.request("POST", "/jobs", {"args": ["echo"],
                                                        "env": {"LD_PRELOAD": "/x.so"}})
    assert response.code == 403
    listed = await instance.request("GET", "/jobs")
    assert json.loads(listed.body)["jobs"] == []
    assert instance.ctx.engine.running == 0


def test_an_allow_entry_that_resolves_to_nothing_stops_startup():
    proc = subprocess.run([PY, "-m", "taskrunner", "--port", "0", "--allow", "no-such-xyz"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "--allow" in proc.stderr and "no-such-xyz" in proc.stderr


def test_allow_is_repeatable_on_the_command_line():
    from taskrunner.cli import parse_config
    assert parse_config(["--allow", "echo", "--allow", "ls"]).allow == ("echo", "ls")
    assert parse_config([]).allow == ()


@pytest.mark.gen_test
@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "GCONV_PATH"])
async def test_loader_variables_cannot_load_code_into_an_allowed_program(instance, name):
    code, body = await instance.run({"args": ["echo"], "env": {name: "/tmp/evil.so"}})
    assert code == 403 and name in body["message"]
    assert body["message"].endswith("it could load other code into an allowed program")
    code, _ = await instance.run({"args": ["echo"], "env": {"LANG": "C"}})
    assert code == 200


# -- the symlink flip: what was checked is what runs -----------------------------------------


@contextlib.contextmanager
def flipping_symlink(first, second):
    """A world-readable directory whose ``prog`` a thread renames, in a loop, between a
    symlink to ``first`` and one to ``second`` (atomically: it always exists)."""
    directory = tempfile.mkdtemp(prefix="taskrunner-flip-")
    os.chmod(directory, 0o755)  # so that --user nobody could follow it too
    prog = os.path.join(directory, "prog")
    os.symlink(first, prog)
    stop = threading.Event()
    flips = 0

    def flip():
        nonlocal flips
        targets = itertools.cycle((second, first))
        while not stop.is_set():
            temporary = os.path.join(directory, "next")
            os.symlink(next(targets), temporary)
            os.rename(temporary, prog)
            flips += 1

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    try:
        yield prog, lambda: flips
    finally:
        stop.set()
        thread.join(10)
        shutil.rmtree(directory)


def race(port, prog, requests=400, seconds=30.0, threads=8):
    """Send up to ``requests`` POST /run of ``prog`` (within ``seconds``); the outcomes."""
    deadline = time.monotonic() + seconds
    body = {"args": [prog, *FLIP_ARGS]}

    def one(_):
        if time.monotonic() > deadline:
            return None
        code, answer = post_run_blocking(port, body)
        if code == 200:
            return "PWNED" if "PWNED" in answer["stdout"] else "echo"
        return code

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return collections.Counter(pool.map(one, range(requests)))


@pytest.mark.parametrize("flags", [
    ["--limit-nofile", "1024"],
    pytest.param(["--user", "nobody"], marks=pytest.mark.skipif(
        os.geteuid() != 0, reason="--user needs root")),
    [],
], ids=["limits", "user", "allow-only"])
def test_a_symlink_flipped_between_check_and_exec_never_runs_the_forbidden_program(
        spawn_instance, flags):
    child = spawn_instance("--allow", "echo", *flags)
    with flipping_symlink(ECHO, DASH) as (prog, flips):
        outcomes = race(child.port, prog)
    assert outcomes["PWNED"] == 0, outcomes
    # The race was run: both programs were seen at check time (echo ran, dash got a 403).
    assert outcomes["echo"] > 0 and outcomes[403] > 0, outcomes
    assert set(outcomes) <= {"echo", 403, None}, outcomes
    assert flips() > 100
