"""Actions through the stack's nginx: run one on any instance, start one as a job and
follow it on its owner, a refused value answered by the instance, the job index keeping
the action and its parameters.

Ports 18880 and 19785-19788.
"""

import json
import os
import shutil
import tempfile

import pytest
from actionsutil import GREET
from stackutil import needs_stack, running_stack

pytestmark = needs_stack()

ACTIONS = GREET + r'''
'''


@pytest.fixture(scope="module")
def stack():
    # The file where the instances (run as the stack runs them) can read it.
    base = tempfile.mkdtemp(prefix="taskrunner-stack-actions-")
    try:
        os.chmod(base, 0o755)
        path = os.path.join(base, "actions.toml")
        with open(path, "w") as f:
            f.write(ACTIONS)
        os.chmod(path, 0o644)
        with running_stack(os.path.join(base, "run"), 18880, 19785,
                           args=f"--actions {path}") as stack:
            yield stack
    finally:
        shutil.rmtree(base)


def test_an_action_runs_and_its_jobs_are_followed_through_nginx(stack):
    for name in ("Ada", "Grace", "Edsger", "Barbara"):  # spread over the instances
        status, _, body = stack.call("POST", "/actions/greet", {"params": {"name": name}})
        assert status == 200, body
        assert json.loads(body)["stdout"] == f"hello, {name}!\n"
    status, _, body = stack.call("POST", "/actions/greet", {"params": {"name": "x; id"}})
    assert (status, json.loads(body)["error"]) == (400, "invalid_param")
    status, _, body = stack.call("POST", "/actions/greet/jobs",
                                 {"params": {"name": "Ada", "greeting": "hi"}})
    assert status == 202, body
    job = json.loads(body)
    status, _, body = stack.call("GET", f"/jobs/{job['id']}/output")
    assert status == 200, body
    lines = [json.loads(line) for line in body.splitlines()]
    assert {"stream": "stdout", "data": "hi, Ada!\n"} in [
        {k: v for k, v in line.items() if k in ("stream", "data")} for line in lines]
    assert (lines[-1]["action"], lines[-1]["params"]) == ("greet",
                                                         {"name": "Ada", "greeting": "hi"})
    status, _, body = stack.call("GET", "/jobs")
    listed = [j for j in json.loads(body)["jobs"] if j["id"] == job["id"]]
    assert [(j["action"], j["params"]) for j in listed] == [
        ("greet", {"name": "Ada", "greeting": "hi"})]
