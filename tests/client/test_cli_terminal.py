"""``trun run`` on a real terminal (a pty that is its controlling tty): a typed Ctrl-C is a
real SIGINT and cancels the remote command (the job cancelled, its process gone); a second
one leaves without waiting and names the job; before a job exists (reading stdin, waiting
to retry a busy instance) it leaves at once and starts nothing; a long job shows a status
line with its elapsed time on the terminal, and none when stderr is a pipe."""

from __future__ import annotations

import re
import signal

import pytest
from cliutil import Terminal, trun
from helpers import pid_alive, wait_for, wait_until

from taskrunner.client import Client

WAITS = ["sh", "-c", "echo pid=$$; exec sleep 60"]


@pytest.fixture
def terminal():
    opened = []

    def open_terminal(url, *args):
        opened.append(Terminal(url, *args))
        return opened[-1]

    yield open_terminal
    for term in opened:
        term.close()


def started_pid(term):
    return int(re.search(rb"pid=(\d+)\r\n", term.read_until(b"\r\n")).group(1))


def test_ctrl_c_cancels_the_remote_command(spawn_instance, terminal):
    child = spawn_instance()
    term = terminal(child.url, "run", "--", *WAITS)
    pid = started_pid(term)
    term.type(b"\x03")  # Ctrl-C: the tty sends SIGINT to trun's process group
    assert term.wait() == 128 + signal.SIGINT
    assert b"cancelling" in term.screen
    with Client(child.url) as client:
        (job,) = client.jobs()
        assert (job.info.state, job.info.status) == ("cancelled", -9)
    assert wait_until(lambda: not pid_alive(pid))


def test_a_second_ctrl_c_stops_waiting_and_names_the_job(spawn_instance, terminal):
    child = spawn_instance()
    term = terminal(child.url, "run", "--", *WAITS)
    pid = started_pid(term)
    child.signal(signal.SIGSTOP)  # the instance cannot answer the cancel
    try:
        term.type(b"\x03")
        term.read_until(b"cancelling")
        term.type(b"\x03")
        assert term.wait() == 128 + signal.SIGINT
        assert pid_alive(pid)  # nothing cancelled it yet
    finally:
        child.signal(signal.SIGCONT)
    job_id = re.search(rb"left job (\S+) as it is", term.screen).group(1).decode()
    with Client(child.url) as client:
        assert client.job(job_id).info.args == WAITS


def test_a_long_job_shows_its_elapsed_time_on_the_terminal(spawn_instance, terminal, tmp_path):
    child = spawn_instance()
    gate = tmp_path / "gate"
    term = terminal(child.url, "run", "--", "sh", "-c", f"echo start; {wait_for(gate)}; echo end")
    term.read_until(b"start\r\n")
    screen = term.read_until(b" s (Ctrl-C cancels)")
    # Drawn once the job has run a second; a loaded machine may draw it later.
    assert re.search(rb"\x1b\[2mtrun: \S+ running [1-9]\d* s \(Ctrl-C cancels\)", screen)
    gate.touch()
    assert term.wait() == 0
    # The status line is erased before the output goes on, and at the end.
    assert b"\r\x1b[Kend\r\n" in term.screen
    assert term.screen.endswith(b"\r\x1b[K"), term.screen[-80:]


def test_no_status_line_into_a_pipe(spawn_instance):
    child = spawn_instance()
    done = trun(child.url, "run", "--", "sh", "-c", "sleep 2; echo end")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"end\n", b"")


def test_ctrl_c_before_a_job_exists_exits_quietly(terminal):
    # Nothing listens there and stdin is read first: the Ctrl-C comes before any request.
    term = terminal("http://127.0.0.1:9", "run", "--stdin", "-", "--", "cat")
    assert wait_until(lambda: reads_stdin(term.proc.pid), timeout=30)
    term.type(b"\x03")
    assert term.wait(timeout=5) == 128 + signal.SIGINT  # at once: nothing to wait for
    assert b"Traceback" not in term.screen


def test_ctrl_c_while_waiting_to_retry_exits_at_once_and_starts_nothing(spawn_instance,
                                                                         terminal, tmp_path):
    child = spawn_instance("--max-running", "1", "--max-queued", "0")
    holder = trun(child.url, "run", "-d", "--", "sh", "-c", wait_for(tmp_path / "gate"))
    assert holder.returncode == 0
    term = terminal(child.url, "run", "--retry", "--", "echo", "late")
    term.read_until(b"trying again in")
    term.type(b"\x03")
    assert term.wait(timeout=5) == 128 + signal.SIGINT  # not after its ten retries
    assert b"Traceback" not in term.screen
    with Client(child.url) as client:
        assert len(client.jobs()) == 1  # the holder's alone


def reads_stdin(pid):
    """Whether ``pid`` is blocked in read(0, ...) (/proc/PID/syscall: number, then args)."""
    with open(f"/proc/{pid}/syscall") as f:
        fields = f.read().split()
    return fields[:2] == ["0", "0x0"]
