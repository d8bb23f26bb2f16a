"""Recycling under load through nginx: instances with --max-requests exit and come back,
and not one request fails. Ports 18180 and 18985-18988."""

import re
import time

import pytest
from stackutil import Load, nginx_available, running_stack, supervisor_available

pytestmark = pytest.mark.skipif(not (nginx_available() and supervisor_available()),
                                reason="needs nginx and supervisor: scripts/install-stack-deps")


def test_recycle_under_load_loses_no_request(tmp_path):
    with running_stack(str(tmp_path), 18180, 18985, args="--max-requests 40") as stack:
        with Load(stack.port, {"args": ["sleep", "0.01"]}, workers=8, name="recycle") as load:
            time.sleep(16)
        outcomes = load.outcomes
        failed = [o for o in outcomes if o.status != 200]
        logs = {port: stack.instance_log(port) for port in stack.ports}
        recycles = sum(len(re.findall(r"recycling after \d+ requests", log))
                       for log in logs.values())
        supervisord_log = stack.log("supervisord.log")
        clean_exits = len(re.findall(r"exited: taskrunner_\d+ \(exit status 0; expected\)",
                                     supervisord_log))
        print(f"\nrecycle: {len(outcomes)} requests, {len(failed)} failed, "
              f"{recycles} recycles, {clean_exits} clean exits")
        assert failed == []
        assert len(outcomes) > 500
        assert recycles >= 2
        assert clean_exits >= 2
        assert "exit status 1" not in supervisord_log
        assert "FATAL" not in supervisord_log
        status = stack.script("status")
        assert status.returncode == 0, status.stdout
