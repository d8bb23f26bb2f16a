"""--limit-* and --user: each command is boxed in, and fails the way the OS makes it fail."""

import logging
import os
import pwd
import shutil
import signal
import subprocess

import pytest
from conftest import with_config
from helpers import PY, REPO

is_root = os.geteuid() == 0


@pytest.mark.gen_test
@with_config(limit_as=128)
async def test_over_its_address_space_a_command_gets_memory_error(instance):
    code, body = await instance.run({"args": [PY, "-c", "x = bytearray(1 << 30)"]})
    assert code == 200
    assert body["status"] == 1
    assert "MemoryError" in body["stderr"]
    code, body = await instance.run({"args": [PY, "-c", "x = bytearray(1 << 20); print('ok')"]})
    assert (code, body["stdout"]) == (200, "ok\n")


@pytest.mark.gen_test
@with_config(limit_as=128, limit_cpu=7, limit_nofile=50, limit_fsize=1, limit_nproc=4000)
async def test_the_limits_are_set_hard_so_a_command_cannot_raise_them(instance):
    script = ("import resource as r\n"
              "for n in ('AS', 'CPU', 'NOFILE', 'FSIZE', 'NPROC'):\n"
              "    print(n, *r.getrlimit(getattr(r, 'RLIMIT_' + n)))\n")
    code, body = await instance.run({"args": [PY, "-c", script]})
    assert code == 200, body
    assert body["stdout"].splitlines() == [
        f"AS {128 << 20} {128 << 20}", "CPU 7 7", "NOFILE 50 50",
        f"FSIZE {1 << 20} {1 << 20}", "NPROC 4000 4000"]


@pytest.mark.gen_test
@with_config(limit_fsize=1)
async def test_writing_past_the_file_size_limit_ends_in_sigxfsz(instance, tmp_path):
    target = tmp_path / "big"
    code, body = await instance.run(
        {"args": ["dd", "if=/dev/zero", f"of={target}", "bs=1M", "count=4"]})
    assert code == 200
    assert body["status"] == -signal.SIGXFSZ
    assert target.stat().st_size == 1 << 20


@pytest.mark.gen_test
@with_config(limit_cpu=1)
async def test_a_cpu_hog_is_stopped_by_its_cpu_limit(instance):
    code, body = await instance.run({"args": [PY, "-c", "while True: pass"], "timeout": 20})
    assert code == 200
    assert body["status"] in (-signal.SIGXCPU, -signal.SIGKILL)
    assert not body["timed_out"]


@pytest.mark.gen_test
@with_config(limit_nofile=20)
async def test_too_many_open_files(instance):
    code, body = await instance.run(
        {"args": [PY, "-c", "fs = [open('/dev/null') for _ in range(50)]"]})
    assert code == 200 and "Too many open files" in body["stderr"]


@pytest.mark.gen_test
@with_config(limit_as=512)
async def test_under_a_wrapper_a_missing_program_or_cwd_is_still_a_clean_422(instance, tmp_path):
    code, body = await instance.run({"args": ["no-such-program-xyz"]})
    assert code == 422 and body["error"] == "spawn_failed"
    assert body["message"] == "cannot start 'no-such-program-xyz': No such file or directory"
    code, body = await instance.run({"args": ["true"], "cwd": str(tmp_path / "absent")})
    assert code == 422 and "working directory" in body["message"]
    (tmp_path / "script").write_text("#!/bin/sh\necho hi\n")
    code, body = await instance.run({"args": [str(tmp_path / "script")]})
    assert code == 422 and body["message"].endswith(": Permission denied")
    code, body = await instance.run({"args": ["./x"], "cwd": str(tmp_path)})
    assert code == 422
    code, body = await instance.run({"args": ["pwd"], "cwd": str(tmp_path)})
    assert (code, body["stdout"]) == (200, f"{tmp_path}\n")


@pytest.mark.skipif(not is_root, reason="--user needs root")
@pytest.mark.gen_test
@with_config(user="nobody")
async def test_user_runs_commands_as_that_user_with_its_groups(instance, reachable_runtime):
    nobody = pwd.getpwnam("nobody")
    code, body = await instance.run({"args": ["id"]})
    assert code == 200, body
    assert f"uid={nobody.pw_uid}(nobody)" in body["stdout"]
    assert f"gid={nobody.pw_gid}(" in body["stdout"]
    code, body = await instance.run({"args": [reachable_runtime.python, "-c",
        "import os; print(os.getuid(), os.geteuid(), os.getgid(), os.getegid(), "
        "sorted(os.getgroups()), os.environ['USER'], os.environ['HOME'])"]})
    expected_groups = sorted(os.getgrouplist("nobody", nobody.pw_gid))
    assert body["stdout"].split(" ", 4)[:4] == [str(nobody.pw_uid), str(nobody.pw_uid),
                                                  str(nobody.pw_gid), str(nobody.pw_gid)]
    assert f"{expected_groups} nobody {nobody.pw_dir}" in body["stdout"]
    code, body = await instance.run({"args": ["cat", "/etc/shadow"]})
    assert code == 200 and body["status"] != 0 and "Permission denied" in body["stderr"]


@pytest.mark.skipif(not is_root, reason="--user needs root")
@pytest.mark.gen_test
@with_config(user="nobody", limit_as=256)
async def test_user_and_limits_together(instance, reachable_runtime):
    code, body = await instance.run({"args": [reachable_runtime.python, "-c",
        "import os, resource; print(os.getuid(), resource.getrlimit(resource.RLIMIT_AS)[0])"]})
    assert code == 200, body
    assert body["stdout"] == f"{pwd.getpwnam('nobody').pw_uid} {256 << 20}\n"


def test_an_unknown_user_stops_startup():
    proc = subprocess.run([PY, "-m", "taskrunner", "--port", "0", "--user", "no-such-user-x"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "no such user" in proc.stderr


@pytest.mark.gen_test
@with_config(limit_as=512)
async def test_under_a_wrapper_cwd_errors_name_the_program_and_the_reason(instance, tmp_path):
    absent, a_file = tmp_path / "absent", tmp_path / "file"
    a_file.write_text("")
    for cwd, reason in ((absent, "No such file or directory"), (a_file, "Not a directory")):
        code, body = await instance.run({"args": ["true"], "cwd": str(cwd)})
        assert (code, body["message"]) == (
            422, f"cannot start 'true': working directory {str(cwd)!r}: {reason}")
    # A program given relative to the cwd is found there, not in the service's own cwd.
    (tmp_path / "hello").write_text("#!/bin/sh\necho hello from \"$PWD\"\n")
    (tmp_path / "hello").chmod(0o755)
    code, body = await instance.run({"args": ["./hello"], "cwd": str(tmp_path)})
    assert (code, body["stdout"]) == (200, f"hello from {tmp_path}\n")


def test_the_wrappers_tools_are_found_on_the_given_path(tmp_path):
    from taskrunner.errors import StartupError
    from taskrunner.process.containment import _tool
    with pytest.raises(StartupError, match=r"^prlimit \(util-linux\) is needed for the "
                                           r"configured limits or --user and is not on PATH$"):
        _tool("prlimit", {"PATH": str(tmp_path)})
    (tmp_path / "prlimit").symlink_to(shutil.which("prlimit"))
    assert _tool("prlimit", {"PATH": str(tmp_path)}) == os.path.realpath(shutil.which("prlimit"))


@pytest.mark.skipif(not is_root, reason="--user needs root")
def test_limit_nproc_warns_when_commands_run_as_root_only(caplog):
    from taskrunner.config import Config
    from taskrunner.process.containment import containment_from_config
    warning = "--limit-nproc does not bind commands that run as root; add --user"
    with caplog.at_level(logging.WARNING, logger="taskrunner.limits"):
        containment_from_config(Config(limit_nproc=100), os.environ)
    assert [r.getMessage() for r in caplog.records] == [warning]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="taskrunner.limits"):
        boxed = containment_from_config(Config(limit_nproc=100, user="nobody"), os.environ)
        containment_from_config(Config(limit_as=100), os.environ)
    assert caplog.records == []
    nobody = pwd.getpwnam("nobody")
    assert dict(boxed.env) == {"HOME": nobody.pw_dir, "USER": "nobody", "LOGNAME": "nobody"}
