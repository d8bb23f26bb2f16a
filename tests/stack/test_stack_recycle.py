"""Recycling under load through nginx: instances with --max-requests exit and come back,
and not one request fails. Ports 18180 and 18985-18988."""

import re
import time

from stackutil import Load, needs_stack, running_stack

pytestmark = needs_stack()


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
        # An instance that reached --max-requests as the load stopped may still be between
        # its drain and its successor: every instance is back within a recycle's time.
        deadline = time.monotonic() + 40
        while (status := stack.script("status")).returncode != 0 \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status.returncode == 0, status.stdout


def test_reload_restarts_every_instance_in_turn_under_load_and_loses_no_request(tmp_path):
    with running_stack(str(tmp_path), 18180, 18985) as stack:
        before = {port: stack.health(port)["pid"] for port in stack.ports}
        with Load(stack.port, {"args": ["sleep", "0.01"]}, workers=8, name="reload") as load:
            time.sleep(1)
            done = stack.script("reload")
            assert done.returncode == 0, done.stdout + done.stderr

            def all_replaced():
                now = {port: (stack.health(port) or {}).get("pid") for port in stack.ports}
                return all(now[p] not in (None, before[p]) for p in stack.ports)

            deadline = time.monotonic() + 40
            while not all_replaced() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert all_replaced()
            time.sleep(2.5)  # nginx sends the last one requests again (fail_timeout)
        outcomes = load.outcomes
        failed = [o for o in outcomes if o.status != 200]
        print(f"\nreload: {len(outcomes)} requests, {len(failed)} failed")
        assert failed == []
        assert len(outcomes) > 500
