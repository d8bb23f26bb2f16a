"""``trun actions`` and ``trun do`` against a real child instance with --actions: the list,
live output and the command's exit status, typed KEY=VALUE, --detach, one-line refusals."""

from __future__ import annotations

import json

import pytest
from actionsutil import GREET
from cliutil import trun

ACTIONS = GREET + r'''

[actions.leave]
args = ["/bin/sh", "-c", "echo $0 \"$@\" >&2; exit $0", "{code}", "{verbose}", "{files}"]

[actions.leave.params.code]
type = "integer"
minimum = 0
maximum = 9

[actions.leave.params.verbose]
type = "boolean"
flag = "-v"
default = false

[actions.leave.params.files]
type = "array"
pattern = "[a-z.]+"
max_items = 3
default = []
'''


@pytest.fixture
def url(spawn_instance, tmp_path):
    path = tmp_path / "actions.toml"
    path.write_text(ACTIONS)
    return spawn_instance("--actions", str(path)).url


def test_trun_actions_lists_each_with_its_parameters(url):
    done = trun(url, "actions")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == [
        "greet [greeting=TEXT] name=TEXT", "    Greet someone",
        "leave code=N [verbose=true|false] [files=ITEM...]"]
    listed = json.loads(trun(url, "actions", "--json").stdout)
    assert [a["name"] for a in listed["actions"]] == ["greet", "leave"]


def test_trun_do_runs_live_with_typed_values_and_the_commands_status(url):
    done = trun(url, "do", "greet", "name=Ada Lovelace")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"hello, Ada Lovelace!\n", b"")
    done = trun(url, "do", "leave", "code=3", "verbose=yes", "files=a.txt", "files=b")
    assert (done.returncode, done.stderr) == (3, b"3 -v a.txt b\n")


def test_trun_do_detach_prints_the_job_id_and_a_refusal_is_one_line(url):
    done = trun(url, "do", "--detach", "greet", "name=Ada")
    assert done.returncode == 0 and done.stdout.decode().strip().count(".") == 1
    done = trun(url, "do", "greet", "name=Ada; id")
    assert done.returncode == 125
    assert done.stderr.decode().count("\n") == 1 and b"invalid_param" in done.stderr
    assert b"parameter name must match" in done.stderr
    done = trun(url, "do", "nosuch")
    assert done.returncode == 125 and b"action_not_found" in done.stderr
    done = trun(url, "do", "leave", "code=three")
    assert done.returncode == 2 and b"code must be an integer" in done.stderr
