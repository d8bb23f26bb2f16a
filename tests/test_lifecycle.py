"""The real `python -m taskrunner` process: flags, SIGTERM/SIGINT shutdown, nothing left over."""

import concurrent.futures
import http.client
import json
import signal
import subprocess
import time

import pytest
from helpers import PY, REPO, pid_alive, wait_until
from helpers import post_run_blocking as post

from taskrunner.config import settings


def test_help_lists_every_flag_with_its_default():
    out = subprocess.run([PY, "-m", "taskrunner", "--help"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    flat = " ".join(out.split())
    for setting in settings():
        flag = "--" + setting.name.replace("_", "-")
        assert flag in out, flag
    assert "(default: 8885)" in flat and "(default: 30.0)" in flat


@pytest.mark.parametrize("bad", [["--port", "x"], ["--port", "70000"], ["--bogus"],
                                 ["--event-loop", "tokio"],
                                 ["--default-timeout", "100", "--max-timeout", "10"]])
def test_bad_flags_exit_2_with_a_message(bad):
    result = subprocess.run([PY, "-m", "taskrunner", *bad], cwd=REPO, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert "error" in result.stderr and "Traceback" not in result.stderr


def test_a_port_in_use_is_a_one_line_error_not_a_traceback(spawn_instance):
    busy = spawn_instance()
    result = subprocess.run([PY, "-m", "taskrunner", "--port", str(busy.port)], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{busy.port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_flag_takes_both_spellings(spawn_instance):
    child = spawn_instance("--port=0", "--address", "127.0.0.1")
    status, body = post(child.port, {"args": ["echo", "ok"]})
    assert status == 200 and body["stdout"] == "ok\n"


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_each_event_loop_serves_commands_and_stops_cleanly(spawn_instance, loop):
    child = spawn_instance("--event-loop", loop)
    assert f"event loop {loop})" in child.output()
    status, body = post(child.port, {"args": ["ls", "/proc/self/fd"]})
    assert status == 200 and body["stdout"].split() == ["0", "1", "2", "3"]
    started = time.monotonic()
    status, body = post(child.port, {"args": ["sh", "-c", "sleep 100 & echo hi"]})
    assert status == 200 and body["stdout"] == "hi\n" and time.monotonic() - started < 5
    child.signal(signal.SIGTERM)
    assert child.wait(20) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_running_commands_finish_then_exits_0(spawn_instance, sig):
    child = spawn_instance("--grace", "10")
    with concurrent.futures.ThreadPoolExecutor() as pool:
        pending = pool.submit(post, child.port, {"args": ["sh", "-c", "sleep 1; echo done"]})
        assert wait_until(lambda: "POST" in child.output() or _running(child.port) == 1)
        child.signal(sig)
        status, body = pending.result(timeout=20)
    assert status == 200 and body["stdout"] == "done\n" and body["status"] == 0
    assert child.wait(20) == 0


def test_after_the_grace_period_commands_are_killed_and_nothing_is_left(spawn_instance, tmp_path):
    child = spawn_instance("--grace", "0.5")
    pidfile = tmp_path / "pids"
    script = f"sleep 100 & echo $! > {pidfile}; echo $$ >> {pidfile}; wait"
    with concurrent.futures.ThreadPoolExecutor() as pool:
        pending = pool.submit(post, child.port, {"args": ["sh", "-c", script], "timeout": 60})
        assert wait_until(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 2)
        started = time.monotonic()
        child.signal(signal.SIGTERM)
        status, body = pending.result(timeout=20)
        assert child.wait(20) == 0
    assert time.monotonic() - started < 5
    assert status == 200 and body["status"] == -9
    for pid in map(int, pidfile.read_text().split()):
        assert wait_until(lambda pid=pid: not pid_alive(pid)), f"pid {pid} outlived the instance"


def test_stops_accepting_connections_once_shutting_down(spawn_instance):
    child = spawn_instance("--grace", "5")
    with concurrent.futures.ThreadPoolExecutor() as pool:
        pending = pool.submit(post, child.port, {"args": ["sleep", "1"]})
        assert wait_until(lambda: _running(child.port) == 1)
        child.signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(ConnectionRefusedError):
            http.client.HTTPConnection("127.0.0.1", child.port, timeout=2).connect()
        assert pending.result(timeout=20)[0] == 200
    assert child.wait(20) == 0


def _running(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return int(json.loads(conn.getresponse().read())["running"])
    except OSError:
        return -1
    finally:
        conn.close()
