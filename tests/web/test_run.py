"""POST /run: what a caller gets back for real commands."""

import asyncio
import json
import os
import sys
import time

import pytest
from conftest import with_config
from helpers import PY, pid_alive, wait_until


@pytest.mark.gen_test
async def test_exit_status_stdout_and_stderr(instance):
    code, body = await instance.run(
        {"args": ["sh", "-c", "echo out; echo err >&2; exit 3"], "timeout": 5})
    assert code == 200
    assert body["status"] == 3
    assert body["stdout"] == "out\n"
    assert body["stderr"] == "err\n"
    assert body["timed_out"] is False
    assert body["stdout_truncated"] is False and body["stderr_truncated"] is False
    assert 0 <= body["duration"] < 5


@pytest.mark.gen_test
async def test_arguments_are_never_interpreted_by_a_shell(instance, tmp_path):
    marker = tmp_path / "pwned"
    _code, body = await instance.run({"args": ["echo", f"$(touch {marker})", ";", "*"]})
    assert body["stdout"] == f"$(touch {marker}) ; *\n"
    assert not marker.exists()


@pytest.mark.gen_test
async def test_stdin_text_is_fed_then_closed(instance):
    _code, body = await instance.run({"args": ["cat"], "stdin": "héllo\nwörld"})
    assert body["stdout"] == "héllo\nwörld"
    assert body["status"] == 0


@pytest.mark.gen_test
async def test_large_stdin_is_written_without_blocking(instance):
    text = "x" * (3 * 1024 * 1024 // 4)  # more than a pipe buffer, under --max-body
    code, body = await instance.run({"args": ["wc", "-c"], "stdin": text})
    assert code == 200
    assert body["stdout"].strip() == str(len(text))


@pytest.mark.gen_test
async def test_a_command_reading_stdin_without_any_gets_eof_not_a_hang(instance):
    _code, body = await instance.run({"args": ["cat"], "timeout": 5})
    assert body == {**body, "status": 0, "stdout": "", "timed_out": False}


@pytest.mark.gen_test
async def test_command_that_ignores_its_stdin_does_not_break_the_request(instance):
    code, body = await instance.run({"args": ["true"], "stdin": "y" * 500_000})
    assert code == 200 and body["status"] == 0


@pytest.mark.gen_test
async def test_env_is_added_to_the_base_environment(instance):
    _code, body = await instance.run(
        {"args": ["sh", "-c", "echo $GREETING:$PATH"], "env": {"GREETING": "hi"}})
    greeting, path = body["stdout"].strip().split(":", 1)
    assert greeting == "hi"
    assert path == os.environ["PATH"]


@pytest.mark.gen_test
async def test_cwd_sets_the_working_directory(instance, tmp_path):
    _code, body = await instance.run({"args": ["pwd"], "cwd": str(tmp_path)})
    assert body["stdout"].strip() == str(tmp_path)


@pytest.mark.gen_test
async def test_null_optional_fields_mean_the_defaults(instance):
    code, body = await instance.run(
        {"args": ["true"], "timeout": None, "stdin": None, "env": None, "cwd": None})
    assert code == 200 and body["status"] == 0


@pytest.mark.gen_test
async def test_non_utf8_output_is_replaced_and_still_valid_json(instance):
    code, body = await instance.run(
        {"args": [PY, "-c", "import sys; sys.stdout.buffer.write(b'ok\\xff\\xfe!')"]})
    assert code == 200
    assert body["stdout"] == "ok\ufffd\ufffd!"


@pytest.mark.gen_test
async def test_signal_ends_a_command_with_a_negative_status(instance):
    _code, body = await instance.run({"args": ["sh", "-c", "kill -TERM $$"]})
    assert body["status"] == -15
    assert body["timed_out"] is False


@pytest.mark.gen_test
async def test_timeout_kills_the_whole_group(instance, tmp_path):
    pids = tmp_path / "pids"
    started = time.monotonic()
    code, body = await instance.run({
        "args": ["sh", "-c", f"sleep 60 & echo $! > {pids}; echo $$ >> {pids}; wait"],
        "timeout": 0.5,
    })
    assert time.monotonic() - started < 5
    assert code == 200
    assert body["timed_out"] is True
    assert body["status"] == -9
    for pid in map(int, pids.read_text().split()):
        assert wait_until(lambda pid=pid: not pid_alive(pid)), f"pid {pid} survived"


@pytest.mark.gen_test
async def test_result_comes_back_when_the_main_process_exits(instance, tmp_path):
    pidfile = tmp_path / "bg"
    started = time.monotonic()
    _code, body = await instance.run(
        {"args": ["sh", "-c", f"sleep 100 & echo $! > {pidfile}; echo hi"], "timeout": 30})
    assert time.monotonic() - started < 3
    assert body["stdout"] == "hi\n" and body["status"] == 0 and body["timed_out"] is False
    background = int(pidfile.read_text())
    assert wait_until(lambda: not pid_alive(background)), "the background sleep survived"


@with_config(max_output=1000)
@pytest.mark.gen_test
async def test_output_past_the_cap_is_drained_and_marked_truncated(instance):
    code, body = await instance.run({
        "args": [PY, "-c",
                 "import sys; sys.stdout.write('a' * 5_000_000); sys.stderr.write('e' * 10)"],
        "timeout": 20,
    })
    assert code == 200
    assert body["status"] == 0, "the command must not block on a full pipe"
    assert body["stdout"] == "a" * 1000 and body["stdout_truncated"] is True
    assert body["stderr"] == "e" * 10 and body["stderr_truncated"] is False


@pytest.mark.gen_test
async def test_one_mebibyte_of_output_comes_back_whole(instance):
    _code, body = await instance.run(
        {"args": [PY, "-c", "import sys; sys.stdout.write('z' * 1048576)"], "timeout": 20})
    assert len(body["stdout"]) == 1048576 and body["stdout_truncated"] is False


@pytest.mark.gen_test(timeout=30)
async def test_a_hundred_concurrent_sleeps_finish_together(instance):
    started = time.monotonic()
    results = await asyncio.gather(
        *(instance.run({"args": ["sleep", "1"], "timeout": 10}) for _ in range(100)))
    elapsed = time.monotonic() - started
    assert all(code == 200 and body["status"] == 0 for code, body in results)
    assert elapsed < 4, f"100 x sleep 1 took {elapsed:.1f}s: they did not run concurrently"


@pytest.mark.gen_test
async def test_healthz_counts_running_commands(instance):
    task = asyncio.ensure_future(instance.run({"args": ["sleep", "1"]}))
    await asyncio.sleep(0.3)
    response = await instance.request("GET", "/healthz")
    assert json.loads(response.body)["running"] == 1
    await task


@pytest.mark.gen_test
async def test_disconnecting_client_kills_the_command(instance, tmp_path):
    pidfile = tmp_path / "pid"
    body = (f'{{"args": ["sh", "-c", "echo $$ > {pidfile}; sleep 60"], "timeout": 120}}'
            ).encode()
    _reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
    writer.write(b"POST /run HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    await writer.drain()
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.05)
    pid = int(pidfile.read_text())
    assert pid_alive(pid)
    writer.close()
    for _ in range(100):
        if not pid_alive(pid):
            break
        await asyncio.sleep(0.05)
    assert not pid_alive(pid), "the command outlived its client"
    assert instance.ctx.engine.running == 0


def test_no_zombies_and_no_fd_growth_over_ten_thousand_runs(io_loop):
    from taskrunner.process.engine import CommandSpec, ProcessEngine

    async def many() -> None:
        engine = ProcessEngine(max_output=1024)
        spec = CommandSpec(args=["true"], timeout=10)
        for _ in range(100):  # warm up anything lazily opened
            await engine.start(spec).result
        fds_before = len(os.listdir("/proc/self/fd"))
        semaphore = asyncio.Semaphore(50)

        async def one() -> int:
            async with semaphore:
                return (await engine.start(spec).result).status

        statuses = await asyncio.gather(*(one() for _ in range(10_000)))
        assert set(statuses) == {0}
        assert len(os.listdir("/proc/self/fd")) <= fds_before
        assert len(engine.fd_watcher()) == 0  # every pipe and pidfd left the epoll set
        engine.close()
        assert len(os.listdir("/proc/self/fd")) < fds_before  # the set itself is closed

    io_loop.run_sync(many, timeout=120)
    with open(f"/proc/self/task/{os.getpid()}/children") as f:
        children = f.read().split()
    zombies = [pid for pid in children if not pid_alive(int(pid))]
    assert zombies == []


def test_runs_on_this_python():
    assert sys.version_info >= (3, 11)


@pytest.mark.parametrize("extra", [{}, {"cwd": "/"}], ids=["posix_spawn", "popen"])
@pytest.mark.gen_test
async def test_command_sees_only_stdin_stdout_and_stderr(instance, extra):
    code, body = await instance.run({"args": ["ls", "/proc/self/fd"], **extra})
    assert code == 200
    # ls itself holds one more fd open: the directory it is listing.
    assert body["stdout"].split() == ["0", "1", "2", "3"]


@pytest.mark.parametrize("extra", [{}, {"cwd": "/"}], ids=["posix_spawn", "popen"])
@pytest.mark.gen_test
async def test_commands_get_default_sigpipe_handling(instance, extra):
    code, body = await instance.run(
        {"args": ["sh", "-c", "yes | head -c 2"], "timeout": 5, **extra})
    assert code == 200 and body["stdout"] == "y\n" and body["status"] == 0
    assert body["stderr"] == "", "yes saw EPIPE instead of dying of SIGPIPE"


@pytest.mark.gen_test
async def test_a_request_path_is_searched_for_the_program(instance, tmp_path):
    tool = tmp_path / "only-here"
    tool.write_text("#!/bin/sh\necho found me\n")
    tool.chmod(0o755)
    code, body = await instance.run(
        {"args": ["only-here"], "env": {"PATH": f"{tmp_path}:/usr/bin:/bin"}})
    assert code == 200 and body["stdout"] == "found me\n"


@pytest.mark.parametrize("path", ["/run", "/jobs"])
@pytest.mark.gen_test
async def test_a_half_second_timeout_ends_the_command_at_about_half_a_second(instance, path):
    """Pins the timeout itself: a timeout stretched (x2, x8) or cut short fails here.

    The command's own ``duration`` (spawn to reap) must be within [0.5, 1.0) s; the
    caller's wall time gets more room (a loaded 2-core machine), but not 8x.
    """
    started = time.monotonic()
    response = await instance.request("POST", path, {"args": ["sleep", "30"], "timeout": 0.5})
    body = json.loads(response.body)
    while body.get("state") in ("queued", "running"):  # a job: follow it to its end
        await asyncio.sleep(0.05)
        body = json.loads((await instance.request("GET", f"/jobs/{body['id']}")).body)
    wall = time.monotonic() - started
    assert body["timed_out"] is True and body["status"] == -9
    assert 0.5 <= body["duration"] < 1.0, body["duration"]
    assert 0.5 <= wall < 1.5, wall
