"""``trun`` with pipes, against a real child instance: output live and on the right stream,
the command's exit status as ours (124 timeout, 128+N signal), detach then logs -f and
wait, stdin from a file, the job commands, and one-line errors with exit status 125."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
from cliutil import TRUN, trun, trun_env
from helpers import PY, wait_for, wait_until

from taskrunner import __version__
from taskrunner.client import Client
from taskrunner.web.peers import default_name

# o0 on stdout, e1 on stderr, o2 on stdout, 0.3 s apart: the command's pace.
PACED = ("import os, time\n"
         "for i, fd in enumerate((1, 2, 1)):\n"
         "    os.write(fd, b'%s%d\\n' % (b'oeo'[i:i+1], i))\n"
         "    time.sleep(0.3)")


@pytest.fixture
def url(spawn_instance):
    return spawn_instance().url


def read_lines(pipe, into):
    for line in iter(pipe.readline, b""):
        into.append((time.monotonic(), line))


def test_output_arrives_live_on_its_own_stream_in_order(url):
    proc = subprocess.Popen([*TRUN, "run", "--", PY, "-c", PACED], env=trun_env(url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    readers = [threading.Thread(target=read_lines, args=(pipe, seen))
               for pipe in (proc.stdout, proc.stderr)]
    try:
        for reader in readers:
            reader.start()
        assert proc.wait(60) == 0
    finally:
        proc.kill()
        for reader in readers:
            reader.join(30)
        proc.stdout.close()
        proc.stderr.close()
    seen.sort()
    assert [line for _, line in seen] == [b"o0\n", b"e1\n", b"o2\n"]
    times = [t for t, _ in seen]
    assert times[1] - times[0] > 0.15 and times[2] - times[1] > 0.15, seen


@pytest.mark.parametrize(("command", "status"), [
    (["true"], 0),
    (["sh", "-c", "echo out; exit 3"], 3),
    (["sh", "-c", "kill -9 $$"], 128 + 9),
    (["--timeout", "0.5", "--", "sleep", "30"], 124),  # saying so: test_cli_causes.py
], ids=["0", "3", "signal-9", "timeout"])
def test_the_exit_status_is_the_commands(url, command, status):
    args = ["run", *command] if command[0] == "--timeout" else ["run", "--", *command]
    done = trun(url, *args)
    assert done.returncode == status, done.stderr
    assert done.stderr == b"" or status == 124


def test_a_command_that_cannot_start_is_126_in_one_line(url):
    done = trun(url, "run", "--", "no-such-program-here")
    assert done.returncode == 126
    assert done.stderr.decode().count("\n") == 1 and b"no-such-program-here" in done.stderr


def test_stdin_env_and_cwd_reach_the_command(url, tmp_path):
    (tmp_path / "input.txt").write_text("from a file\n")
    done = trun(url, "run", "--stdin", str(tmp_path / "input.txt"), "--env", "A=1",
                "--cwd", str(tmp_path), "--", "sh", "-c", "cat; echo $A; pwd")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"from a file\n1\n{tmp_path}\n".encode()
    piped = trun(url, "run", "--stdin", "-", "--", "cat", input=b"from a pipe")
    assert piped.stdout == b"from a pipe"


def test_detach_then_logs_follow_and_wait(url, tmp_path):
    gate = tmp_path / "gate"
    detached = trun(url, "run", "--detach", "--", "sh", "-c",
                    f"echo before; {wait_for(gate)}; echo after; echo bye >&2; exit 3")
    assert detached.returncode == 0, detached.stderr
    job_id = detached.stdout.decode().strip()
    with Client(url) as client:
        assert client.job(job_id).info.state == "running"  # returned before the job ended
    follower = subprocess.Popen([*TRUN, "logs", "-f", job_id], env=trun_env(url),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert follower.stdout.readline() == b"before\n"  # what was written before
        gate.touch()
        out, err = follower.communicate(timeout=60)
    finally:
        follower.kill()
        follower.communicate()
    assert (follower.returncode, out, err) == (0, b"after\n", b"bye\n")
    assert trun(url, "wait", job_id).returncode == 3
    logs = trun(url, "logs", job_id)
    assert (logs.stdout, logs.stderr) == (b"before\nafter\n", b"bye\n")


def test_ps_cancel_and_health(url, tmp_path):
    job_id = trun(url, "run", "-d", "--", "sleep", "60").stdout.decode().strip()
    table = trun(url, "ps").stdout.decode().splitlines()
    assert table[0].split() == ["ID", "STATE", "EXIT", "CALLER", "CREATED", "DURATION",
                                "COMMAND"]
    assert table[1].split()[:2] == [job_id, "running"]
    cancelled = trun(url, "cancel", job_id)
    assert cancelled.returncode == 0 and b"cancelled" in cancelled.stdout
    listed = json.loads(trun(url, "jobs", "--json").stdout)
    assert [(job["id"], job["state"]) for job in listed["jobs"]] == [(job_id, "cancelled")]
    assert trun(url, "wait", job_id).returncode == 137
    health = trun(url, "health")
    assert health.returncode == 0 and health.stdout.startswith(b"status ok")


def refused_url():
    """A port with a socket bound but not listening: connections to it are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def one_line_error(done, *words):
    text = done.stderr.decode()
    assert done.returncode == 125, text
    assert text.startswith("trun: ") and text.count("\n") == 1, text
    assert "Traceback" not in text
    for word in words:
        assert word in text, text


def test_a_wrong_url_is_one_line_and_125(url):
    one_line_error(trun("localhost:8885", "ps"), "not an http:// or https:// URL")
    one_line_error(trun(f"{url}/not/here", "ps"), "404 not_found", "TASKRUNNER_URL")
    sock, refused = refused_url()
    try:
        one_line_error(trun(refused, "run", "--", "true"), "Connection refused")
    finally:
        sock.close()


def test_a_bad_token_is_one_line_and_125(spawn_instance):
    child = spawn_instance(env={"TASKRUNNER_TOKEN": "right-token-0123456789"})
    one_line_error(trun(child.url, "run", "--", "true"), "401 unauthorized", "TASKRUNNER_TOKEN")
    one_line_error(trun(child.url, "ps", token="wrong"), "401 unauthorized")
    assert trun(child.url, "run", "--", "true", token="right-token-0123456789").returncode == 0


def test_health_sends_the_token_and_without_it_gets_the_status_only(spawn_instance):
    child = spawn_instance(env={"TASKRUNNER_TOKEN": "right-token-0123456789"})
    whole = trun(child.url, "health", token="right-token-0123456789")
    assert whole.returncode == 0
    assert whole.stdout.decode().split() == [
        "status", "ok", "instance", default_name(child.port), "running", "0", "version",
        __version__]
    assert (trun(child.url, "health").stdout, trun(child.url, "health", token="wrong").stdout) \
        == (b"status ok\n", b"status ok\n")


def test_busy_is_one_line_and_retry_honours_retry_after(spawn_instance, tmp_path):
    child = spawn_instance("--max-running", "1", "--max-queued", "0")
    gate = tmp_path / "gate"
    holder = trun(child.url, "run", "-d", "--", "sh", "-c", wait_for(gate))
    assert holder.returncode == 0
    one_line_error(trun(child.url, "run", "--", "true"), "429", "--retry", "1 s")
    patient = subprocess.Popen([*TRUN, "run", "--retry", "--", "echo", "hi"],
                               env=trun_env(child.url), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        line = patient.stderr.readline()
        assert b"429 too_many_requests): trying again in 1 s" in line, line
        gate.touch()
        out, _ = patient.communicate(timeout=60)
    finally:
        patient.kill()
        patient.communicate()
    assert (patient.returncode, out) == (0, b"hi\n")


def test_a_closed_stdout_cancels_the_job_and_exits_141(url):
    proc = subprocess.Popen([*TRUN, "run", "--", "sh", "-c", "while :; do echo y; sleep 0.1; done"],
                            env=trun_env(url), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"y\n"
        proc.stdout.close()  # as `| head -1` does
        assert proc.wait(60) == 141
        assert proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    with Client(url) as client:
        (job,) = client.jobs()
        assert job.info.state == "cancelled"


def test_a_command_killed_from_outside_is_128_plus_9(url):
    proc = subprocess.Popen([*TRUN, "run", "--", "sh", "-c", "echo $$; exec sleep 60"],
                            env=trun_env(url), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pid = int(proc.stdout.readline())
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(60) == 128 + signal.SIGKILL
    finally:
        proc.kill()
        proc.communicate()


def test_a_queued_job_that_cannot_start_is_126_with_its_reason(spawn_instance, tmp_path):
    child = spawn_instance("--max-running", "1")
    gate, program = tmp_path / "gate", tmp_path / "program"
    program.write_text("#!/bin/sh\necho never\n")
    program.chmod(0o755)
    assert trun(child.url, "run", "-d", "--", "sh", "-c", wait_for(gate)).returncode == 0
    queued = trun(child.url, "run", "-d", "--", str(program)).stdout.decode().strip()
    with Client(child.url) as client:
        assert client.job(queued).info.state == "queued"
    program.unlink()  # gone when its turn comes
    gate.touch()
    done = trun(child.url, "wait", queued)
    assert done.returncode == 126, done.stderr
    assert done.stderr.startswith(f"trun: job {queued} failed: ".encode())
    assert done.stderr.count(b"\n") == 1


def test_the_console_script_is_trun(url):
    trun_script = os.path.join(os.path.dirname(PY), "trun")  # installed with the package
    done = subprocess.run([trun_script, "health"], env=trun_env(url), capture_output=True,
                          timeout=60, check=False)
    assert (done.returncode, done.stdout.split()[:2]) == (0, [b"status", b"ok"])


def test_ps_lists_every_instance_sharing_an_index_and_filters(spawn_instance, tmp_path):
    state = ["--state-dir", str(tmp_path / "state")]
    one = spawn_instance("--instance", "one", *state).url
    two = spawn_instance("--instance", "two", *state).url
    first = trun(one, "run", "-d", "--", "sleep", "60").stdout.decode().strip()
    second = trun(two, "run", "--", "true")
    assert second.returncode == 0

    def listed(*flags):
        return [(job["id"].split(".")[0], job["state"])
                for job in json.loads(trun(one, "ps", "--json", *flags).stdout)["jobs"]]

    assert wait_until(lambda: listed() == [("two", "exited"), ("one", "running")], 10)
    assert listed("--instance", "two") == [("two", "exited")]
    assert listed("--state", "running") == [("one", "running")]
    assert listed("--limit", "1") == [("two", "exited")]
    assert trun(one, "cancel", first).returncode == 0
