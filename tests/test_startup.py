"""A startup refused at any of its steps leaves nothing behind.

Each case makes one step of `Server.startup` fail for real — a token no client could send,
a user that does not exist, a refused ``--allow``, cgroup limits the kernel refuses, a bad
``--certfile``, an empty callback secret, a bad ``--callers`` file, a ``--state-dir`` others
may read, a port already taken — with the steps before it making what they can here (the
sandbox's work root, the instance's cgroups, the job index and its name). What an operator
notices: ``python -m taskrunner`` exits 1 with one line that says why. What must not stay
behind, checked in this process where a leak would last: a listening socket, a child (the
watchdog), a cgroup, a sandbox work root, an open fd; and the instance's name in the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import glob
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from helpers import PY, REPO, until

from taskrunner.cli import parse_config
from taskrunner.errors import StartupError
from taskrunner.server import Server

CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_v1_here() -> bool:
    return os.geteuid() == 0 and all(
        os.path.isdir(os.path.join(CGROUP_ROOT, key)) for key in ("memory", "cpu"))


SANDBOX = shutil.which("bwrap") is not None
CGROUPS = _cgroup_v1_here()
needs_cgroups = pytest.mark.skipif(not CGROUPS and not os.environ.get("CI"),
                                   reason="needs root and cgroup v1 memory and cpu")
# What the earliest steps make when they can here: a sandbox's work root, the instance's
# own parent cgroups. Every later refusal must take them away again.
MADE_EARLY = [*(["--sandbox"] if SANDBOX else []), *(["--memory-max", "64"] if CGROUPS else [])]


@dataclass(frozen=True)
class World:
    """Files a case names: each usable except the one its step refuses."""

    dir: Path
    taken_port: int

    def path(self, name: str) -> str:
        return str(self.dir / name)


@dataclass(frozen=True)
class Case:
    """One step refused: the flags (given the `World`) and what the one line says."""

    id: str
    flags: Callable[[World], list[str]]
    says: str
    marks: tuple[pytest.MarkDecorator, ...] = ()


# In the order of the steps in Server._start.
CASES = [
    Case("token", lambda w: ["--token-file", w.path("token")], "holds whitespace"),
    Case("protected-mode", lambda w: ["--address", "0.0.0.0"], "without a token"),
    Case("user", lambda w: ["--user", "no-such-user-here"], "no such user"),
    Case("allow", lambda w: [*MADE_EARLY, "--allow", "no-such-program-here"],
         "--allow: cannot start 'no-such-program-here'"),
    Case("cgroup-limit", lambda w: [*MADE_EARLY, "--cpu-max", "1e9"],
         "cgroup limits cannot be applied", (needs_cgroups,)),
    Case("certfile", lambda w: [*MADE_EARLY, "--certfile", w.path("garbage.pem")],
         "holds no PEM certificate"),
    Case("callback-secret", lambda w: [*MADE_EARLY, "--callback-allow", "127.0.0.1:9",
                                       "--callback-secret-file", w.path("empty")],
         "is empty"),
    Case("callers", lambda w: [*MADE_EARLY, "--callers", w.path("callers.toml")],
         "not valid TOML"),
    Case("index-before-binding", lambda w: [*MADE_EARLY, "--instance", "refused",
                                            "--state-dir", w.path("open")],
         "readable or writable by others"),
    Case("port-taken", lambda w: [*MADE_EARLY, "--instance", "held", "--state-dir",
                                  w.path("state"), "--port", str(w.taken_port)],
         "Address already in use"),
    # Named after the port it gets: bound first, then the index refuses.
    Case("index-after-binding", lambda w: [*MADE_EARLY, "--state-dir", w.path("open")],
         "readable or writable by others"),
]
PARAMS = [pytest.param(case, id=case.id, marks=case.marks) for case in CASES]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    (tmp_path / "token").write_text("two words\n")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    (tmp_path / "empty").write_text("")
    (tmp_path / "callers.toml").write_text("realm = \n")
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield World(tmp_path, taken.getsockname()[1])


# -- what may be left behind -----------------------------------------------------------

@dataclass(frozen=True)
class Leftovers:
    """What a process holds that a refused startup must not add to."""

    fds: int
    listening: frozenset[int]
    children: frozenset[int]
    cgroups: frozenset[str]


def leftovers(pid: int) -> Leftovers:
    """What process ``pid`` holds now (fds and listening sockets: only while it lives)."""
    return Leftovers(fds=_count_fds(pid), listening=_listening(pid), children=_children(pid),
                     cgroups=_cgroups_of(pid))


def _count_fds(pid: int) -> int:
    with contextlib.suppress(FileNotFoundError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return 0


def _listening(pid: int) -> frozenset[int]:
    # The socket inodes of pid's fds that /proc/net/tcp* shows in state LISTEN (0A).
    inodes = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
                if match:
                    inodes.add(int(match.group(1)))
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[9]) in inodes:
                    listening.add(int(fields[9]))
    return frozenset(listening)


def _children(pid: int) -> frozenset[int]:
    # Zombies included: a child never reaped is left behind too.
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(name))
    return frozenset(found)


def _cgroups_of(pid: int) -> frozenset[str]:
    # The parents an instance makes in its own cgroup: taskrunner-<pid>[-<n>].
    own = re.compile(rf"taskrunner-{pid}(-\d+)?")
    return frozenset(path for path in glob.glob(f"{CGROUP_ROOT}/**/taskrunner-{pid}*",
                                                recursive=True)
                     if own.fullmatch(os.path.basename(path)))


def _work_roots_left(log: str, sandboxed: bool) -> list[str]:
    # The sandbox's work roots the log named ("work directories in ..."): none may stay.
    named = set(re.findall(r"work directories in (/[^,)\s]+)", log))
    assert bool(named) is sandboxed, log
    return [root for root in named if os.path.exists(root)]


# -- the real command: exit 1, one line ------------------------------------------------

@pytest.mark.parametrize("case", PARAMS)
def test_each_refused_step_exits_1_with_one_line(world: World, case: Case) -> None:
    flags = ["--port", "0", *case.flags(world)]
    env = {k: v for k, v in os.environ.items() if k != "TASKRUNNER_TOKEN"}
    proc = subprocess.Popen([PY, "-m", "taskrunner", "--log-format", "json", *flags],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # it started after all
            proc.kill()
            proc.wait()
    # Log records (one JSON object a line) may come first; the refusal is one line of text.
    said = [line for line in err.splitlines() if not line.startswith("{")]
    assert (proc.returncode, out) == (1, ""), err
    assert len(said) == 1 and said[0].startswith("taskrunner: "), err
    assert case.says in said[0], said[0]
    assert all(json.loads(line)["level"] != "ERROR" for line in err.splitlines()
               if line.startswith("{")), err
    assert not _cgroups_of(proc.pid)
    assert not _work_roots_left(err, "--sandbox" in flags)


# -- in this process: nothing held afterwards ------------------------------------------

def _refuse(io_loop: object, flags: list[str], says: str) -> None:
    server = Server(parse_config(["--port", "0", *flags]), handle_signals=False, watchdog=True)
    with pytest.raises(StartupError, match=re.escape(says)):
        io_loop.run_sync(server.startup, timeout=60)  # type: ignore[attr-defined]


def _twice_leaves_nothing(attempt: Callable[[], None], caplog: pytest.LogCaptureFixture,
                          sandboxed: bool) -> None:
    # The first attempt may load what stays loaded (a module's own fd, say): the second
    # must add no fd; neither may add anything else. The garbage collector is off: what
    # was made is closed by the undo, not found later by chance.
    gc.collect()
    gc.disable()
    try:
        with caplog.at_level(logging.INFO):
            start = leftovers(os.getpid())
            attempt()
            warm = leftovers(os.getpid())
            attempt()
            end = leftovers(os.getpid())
    finally:
        gc.enable()
    assert end.fds == warm.fds
    assert replace(end, fds=0) == replace(start, fds=0)
    assert not _work_roots_left(caplog.text, sandboxed)


@pytest.mark.parametrize("case", PARAMS)
def test_each_refused_step_leaves_nothing_behind_in_the_process(io_loop, world, case,
                                                                 monkeypatch, caplog):
    monkeypatch.delenv("TASKRUNNER_TOKEN", raising=False)
    flags = case.flags(world)
    _twice_leaves_nothing(lambda: _refuse(io_loop, flags, case.says), caplog,
                          "--sandbox" in flags)


def test_a_refused_bind_gives_the_instance_name_back(io_loop, world):
    # The name is taken in the index before binding; a second process asking for it while
    # the first lives is refused, so it must be given back when the bind fails.
    state = ["--instance", "held", "--state-dir", world.path("state")]
    _refuse(io_loop, [*state, "--port", str(world.taken_port)], "Address already in use")
    server = Server(parse_config(["--port", "0", *state]), handle_signals=False)
    io_loop.run_sync(server.startup, timeout=60)
    io_loop.run_sync(server.shutdown, timeout=60)


def test_a_failure_at_the_last_step_undoes_every_step_before_it(world, caplog):
    # Signals can be handled on the main thread only: a server that wants them, started on
    # another thread, fails at its last step, after the watchdog, the index, the engine and
    # the listening socket were made.
    config = parse_config(["--port", "0", *MADE_EARLY, "--state-dir", world.path("state")])
    failures: list[BaseException] = []

    def start() -> None:
        try:
            asyncio.run(Server(config, handle_signals=True, watchdog=True).startup())
        except BaseException as exc:
            failures.append(exc)

    def attempt() -> None:
        thread = threading.Thread(target=start)
        thread.start()
        thread.join(60)
        assert [type(exc) for exc in failures] == [RuntimeError], failures
        assert "main thread" in str(failures.pop())

    _twice_leaves_nothing(attempt, caplog, SANDBOX)


@pytest.mark.gen_test(timeout=60)
async def test_a_startup_cancelled_while_waiting_for_its_index_undoes_what_it_made(world,
                                                                                  caplog):
    # Named after the port it gets, it binds first, then waits for an index nobody answers
    # (hosts and their index may start in any order): Ctrl-C comes meanwhile.
    pytest.importorskip("psycopg")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    config = parse_config(["--port", "0", *MADE_EARLY, "--state-url",
                           f"postgresql://taskrunner@127.0.0.1:{closed}/taskrunner"])
    caplog.set_level(logging.INFO)
    before = leftovers(os.getpid())
    server = Server(config, handle_signals=False, watchdog=True)
    starting = asyncio.ensure_future(server.startup())
    await until(lambda: _listening(os.getpid()) - before.listening)  # bound, now waiting
    assert not starting.done()
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert leftovers(os.getpid()) == before
    assert not _work_roots_left(caplog.text, SANDBOX)


def test_a_startup_that_completes_is_undone_whole_by_its_shutdown(io_loop, world, caplog):
    flags = ["--port", "0", *MADE_EARLY, "--state-dir", world.path("state")]

    def serve_and_stop() -> None:
        server = Server(parse_config(flags), handle_signals=False, watchdog=True)
        io_loop.run_sync(server.startup, timeout=60)
        assert server.watchdog is not None and server.watchdog.pid in _children(os.getpid())
        assert _listening(os.getpid())
        io_loop.run_sync(server.shutdown, timeout=60)

    _twice_leaves_nothing(serve_and_stop, caplog, SANDBOX)
