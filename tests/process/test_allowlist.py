"""--allow: only the listed programs run, by their real path; tricks get a 403."""

import os
import shutil
import subprocess

import pytest
from helpers import PY, REPO

from taskrunner.config import Config

ECHO = os.path.realpath(shutil.which("echo"))


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
async def test_a_program_that_does_not_exist_is_not_allowed(instance):
    code, _ = await instance.run({"args": ["no-such-program-xyz"]})
    assert code == 403


@pytest.mark.gen_test
async def test_the_real_path_is_what_runs(instance):
    code, body = await instance.run({"args": [PY, "-c",
                                              "import os; print(os.readlink('/proc/self/exe'))"]})
    assert code == 200
    assert body["stdout"].strip() == os.path.realpath(PY)


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
    code, _ = await instance.run({"args": ["echo"], "env": {"LANG": "C"}})
    assert code == 200
