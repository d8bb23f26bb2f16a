"""The process engine: start commands, capture their output, end them, reap them.

No HTTP here. `ProcessEngine.start` spawns an argument list (never through a shell) in a
session of its own and returns a `Command` whose `result` future resolves to a
`CommandResult` once the command has exited, whatever it left behind has been killed, and
its output pipes have been read to the end.

How it is built, and why:

* Children are started by `taskrunner.process.spawn` (posix_spawn, Popen where it must; its
  docstring has the figures).
* Exit is noticed through a pidfd (``os.pidfd_open``) watched from the IOLoop: no SIGCHLD
  handler (Tornado's `Subprocess` installs one per process, tied to one loop), no thread per
  child (asyncio's child watchers on 3.11), no polling. The pidfd is readable when the
  child is a zombie; we kill its group *before* reaping it, so the group id cannot have
  been reused by then.
* Pipes are made here (``os.pipe2(O_CLOEXEC)``) and read with ``os.read`` when ready: no
  file objects, no iostream buffers. stdin is a shared ``/dev/null`` fd unless the request
  gives text, which is written without blocking and then closed.
* Pipes and pidfds sit in one epoll set of the engine's own (`taskrunner.process.fdwatch`), which
  the IOLoop watches as a single fd: two system calls per fd instead of about eight.

A command's process group is SIGKILLed when its main process exits (so ``sh -c 'sleep 100
& echo hi'`` returns at once and leaves nothing running), on timeout and on cancel. A
grandchild that left the group with ``setsid`` cannot be reached that way; if it keeps the
output pipes open, they are closed ``drain_grace`` seconds after the main process exited.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

from tornado.ioloop import IOLoop

from taskrunner.errors import OutOfResources, SpawnError, StartError
from taskrunner.process.environment import (
    CommandTrace,
    base_environment,
    command_environment,
)
from taskrunner.process.fdwatch import READ, WRITE, FdWatcher
from taskrunner.process.heap import LARGE_OUTPUT
from taskrunner.process.output import OutputLog
from taskrunner.process.spawn import Reaper, kill_group, make_inherited_fds_private, spawn_child
from taskrunner.process.usage import TreeUsage, Usage

log = logging.getLogger("taskrunner.engine")

OutputListener = Callable[[str, bytes], None]
"""Called with ``("stdout" | "stderr", chunk)`` for each chunk a command writes that is
kept in its `OutputLog` (the chunks past ``max_output`` are only counted)."""

_READ_SIZE = 65536  # a pipe's default capacity
_READS_PER_WAKEUP = 16


@dataclass(frozen=True)
class CommandSpec:
    """What to run: an argument list and how to run it."""

    args: Sequence[str]
    timeout: float
    stdin: str | None = None
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    trace: CommandTrace | None = None
    """The request's trace context: ``TRACEPARENT``/``TRACESTATE`` in the environment."""


@dataclass(frozen=True)
class CommandResult:
    """How a command ended, and its output. ``status`` is negative when a signal ended it,
    as in Popen."""

    status: int
    output: OutputLog
    timed_out: bool
    cancelled: bool
    duration: float
    oom_killed: bool = False  # the memory limit (--memory-max) killed one of its processes
    usage: Usage | None = None  # what it cost (taskrunner.process.usage)

    @property
    def stdout(self) -> str:
        """What was kept of stdout, decoded as UTF-8 (undecodable bytes become U+FFFD)."""
        return self.output.text("stdout")

    @property
    def stderr(self) -> str:
        """What was kept of stderr, decoded as UTF-8 (undecodable bytes become U+FFFD)."""
        return self.output.text("stderr")

    @property
    def stdout_truncated(self) -> bool:
        """More than ``max_output`` bytes were written to stdout."""
        return self.output.truncated("stdout")

    @property
    def stderr_truncated(self) -> bool:
        """More than ``max_output`` bytes were written to stderr."""
        return self.output.truncated("stderr")

class Enclosure(Protocol):
    """What holds a command's whole process tree beyond its process group (its cgroup),
    so that a ``setsid`` escapee dies too, and what else it holds until it has ended (a
    sandbox work directory): `taskrunner.process.confinement.Confinement`."""

    def spawning(self) -> AbstractContextManager[None]:
        """The block the spawn happens in."""

    def kill(self) -> None:
        """SIGKILL every process of the command."""

    def usage(self) -> TreeUsage | None:
        """The whole tree's figures (its cgroup's), read once it has ended, before
        `close`; None when nothing measures them."""

    def close(self) -> bool:
        """The command has ended: let go; True if the memory limit killed one of its
        processes."""


SpawnHook = Callable[[int], None]
"""Called with a command's process-group id when it is spawned and again when it is reaped."""


class ProcessEngine:
    """Starts commands and keeps track of the ones still running.

    ``base_env`` is the environment every command starts from (default: the clean one of
    `taskrunner.process.environment`; a request's ``env`` is laid over it); ``max_output``
    bounds what is kept of each stream; ``on_spawn`` / ``on_reap`` let a watchdog learn
    which process groups to kill if this process dies;
    ``on_large_output`` is called when a command with at least `LARGE_OUTPUT` bytes of
    output has finished (see `taskrunner.process.heap`).
    """

    def __init__(
        self,
        max_output: int,
        base_env: Mapping[str, str] | None = None,
        drain_grace: float = 0.5,
        on_spawn: SpawnHook | None = None,
        on_reap: SpawnHook | None = None,
        on_large_output: Callable[[], None] | None = None,
    ) -> None:
        self.max_output = max_output
        self.on_large_output = on_large_output
        self.base_env = dict(base_environment(os.environ) if base_env is None else base_env)
        self.drain_grace = drain_grace
        self.on_spawn = on_spawn
        self.on_reap = on_reap
        self.commands: set[Command] = set()
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._watcher: FdWatcher | None = None
        make_inherited_fds_private()

    @property
    def running(self) -> int:
        """How many commands have not finished yet."""
        return len(self.commands)

    def start(
        self,
        spec: CommandSpec,
        listener: OutputListener | None = None,
        argv_prefix: Sequence[str] = (),
        enclosure: Enclosure | None = None,
        queued: float = 0.0,
    ) -> Command:
        """Spawn ``spec`` now; raise `SpawnError` if it cannot start, `OutOfResources` if
        this process is out of fds or processes (nothing is left running or open then).

        ``argv_prefix``, the command's wrappers (`Confinement.prefix`), is put before
        ``spec.args``; ``enclosure`` is spawned into, killed with the command's group and
        closed when it has ended: the command owns it once it has started (the caller
        closes it if this raises). ``queued``, the seconds it waited for a slot, goes into
        its result's `Usage`.
        """
        env = command_environment(self.base_env, spec.env, spec.trace)
        argv = [*argv_prefix, *spec.args]
        opened: list[int] = []  # every fd made here; the parent's are closed on failure
        try:
            out_r, out_w = _pipe(opened)
            err_r, err_w = _pipe(opened)
            in_r, in_w = _pipe(opened) if spec.stdin else (-1, -1)
        except OSError as exc:
            _close_all(opened)
            raise _spawn_error(spec, exc) from None
        stdin = in_r if in_r >= 0 else self._devnull
        try:
            with nullcontext() if enclosure is None else enclosure.spawning():
                pid, reap = spawn_child(argv, env, stdin, out_w, err_w, cwd=spec.cwd,
                                        own_path=bool(spec.env and "PATH" in spec.env))
        except OSError as exc:
            _close_all(opened)
            raise _spawn_error(spec, exc) from None
        _close_all([out_w, err_w, in_r])  # the child's ends: it has them now
        pidfd = -1
        try:
            pidfd = os.pidfd_open(pid)
            command = Command(self, spec, pid, reap, pidfd, out_r, err_r, in_w, listener,
                              enclosure, queued)
        except BaseException as exc:
            # Its exit would go unnoticed (no pidfd, the epoll set full, or any other
            # failure half-way): end it now rather than lose it, then re-raise.
            kill_group(pid)
            if enclosure is not None:
                enclosure.kill()
            _reap_now(reap)
            for fd in (out_r, err_r, in_w, pidfd):
                if fd >= 0:
                    self.fd_watcher().unwatch(fd)
                    os.close(fd)
            if isinstance(exc, OSError):
                raise _spawn_error(spec, exc) from None
            raise
        self.commands.add(command)
        if self.on_spawn is not None:
            self.on_spawn(pid)
        return command

    def fd_watcher(self) -> FdWatcher:
        """The epoll set the commands' fds are watched in (made on first use, on the
        current IOLoop)."""
        if self._watcher is None:
            self._watcher = FdWatcher(IOLoop.current())
        return self._watcher

    def kill_all(self) -> None:
        """SIGKILL the process group of every running command."""
        for command in list(self.commands):
            command.kill()

    async def wait_all(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every command to finish; True if they did."""
        pending = [command.result for command in self.commands]
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=timeout)
        return not still

    def close(self) -> None:
        """Kill what still runs and release the engine's own fd."""
        self.kill_all()
        if self._watcher is not None and not self.commands:
            self._watcher.close()
            self._watcher = None
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1

    def _finished(self, command: Command) -> None:
        self.commands.discard(command)
        if self.on_reap is not None:
            self.on_reap(command.pid)


# Errors of this process's limits, not of the request: the caller may retry.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})


def _spawn_error(spec: CommandSpec, exc: OSError) -> StartError:
    program = spec.args[0]
    reason = exc.strerror or str(exc)
    if exc.errno in _RESOURCE_ERRNOS:
        return OutOfResources(f"cannot start {program!r} now: {reason}; retry later")
    if spec.cwd is not None and exc.filename == spec.cwd:
        return SpawnError(f"cannot start {program!r}: working directory {spec.cwd!r}: {reason}")
    return SpawnError(f"cannot start {program!r}: {reason}")


def _pipe(opened: list[int]) -> tuple[int, int]:
    """A close-on-exec pipe, its two fds also added to ``opened``."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    opened += (read_end, write_end)
    return read_end, write_end


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def _reap_now(reap: Reaper) -> None:
    """Reap a child that was just SIGKILLed (an error path: it dies within milliseconds)."""
    for _ in range(5000):
        if reap() is not None:
            return
        time.sleep(0.001)
    log.error("a killed child was not reaped within 5 s")


class Command:
    """One spawned command: its pid, its ``result`` future, and ways to end it early."""

    def __init__(
        self,
        engine: ProcessEngine,
        spec: CommandSpec,
        pid: int,
        reap: Reaper,
        pidfd: int,
        stdout_fd: int,
        stderr_fd: int,
        stdin_fd: int,
        listener: OutputListener | None,
        enclosure: Enclosure | None = None,
        queued: float = 0.0,
    ) -> None:
        self.spec = spec
        self.enclosure = enclosure
        self.pid = pid
        self.returncode: int | None = None
        self.queued = queued
        self._rusage: resource.struct_rusage | None = None
        self.started = time.monotonic()
        self.timed_out = False
        self.cancelled = False
        self.result: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._on_finish: list[Callable[[CommandResult], None]] = []
        self._engine = engine
        self._reap = reap
        self._loop = IOLoop.current()
        self._fds = engine.fd_watcher()
        self._listener = listener
        self._exited = False
        self.output = OutputLog(engine.max_output)
        """What the command wrote so far (jobs stream and store it while it runs)."""
        self._names = {stdout_fd: "stdout", stderr_fd: "stderr"}
        self._open_pipes = {stdout_fd, stderr_fd}
        self._stdin_fd = -1
        self._stdin_data = b""
        self._stdin_registered = False
        for fd in (stdout_fd, stderr_fd):
            os.set_blocking(fd, False)
            self._fds.watch(fd, READ, self._on_readable)
        self._pidfd = pidfd
        self._fds.watch(self._pidfd, READ, self._on_exit)
        self._drain_timer: object | None = None
        if stdin_fd >= 0:
            assert spec.stdin is not None
            self._stdin_fd = stdin_fd
            self._stdin_data = spec.stdin.encode("utf-8")
            os.set_blocking(stdin_fd, False)
            self._write_stdin()
        # Last: if anything above raised, the engine reaps the child, and no timer may be
        # left to kill its group id later (by then, perhaps, someone else's).
        self._deadline = self._loop.call_later(spec.timeout, self._on_timeout)

    def __repr__(self) -> str:
        return f"<Command pid={self.pid} args={list(self.spec.args)!r}>"

    @property
    def program(self) -> str:
        """The command's program, ``args[0]``."""
        return self.spec.args[0]

    def on_finish(self, callback: Callable[[CommandResult], None]) -> None:
        """Call ``callback(result)`` the moment the command ends, before ``result`` is set.

        Synchronous, unlike a done callback on ``result``, which costs an event-loop turn
        per callback on every command.
        """
        self._on_finish.append(callback)

    def cancel(self) -> None:
        """SIGKILL the command's group; its result will say ``cancelled``."""
        if not self._exited:
            self.cancelled = True
        self.kill()

    def kill(self) -> None:
        """SIGKILL the command's process group (and its cgroup), unless it was already
        reaped."""
        if not self._exited:
            self._kill_tree()

    def _kill_tree(self) -> None:
        kill_group(self.pid)
        if self.enclosure is not None:
            self.enclosure.kill()

    # -- stdin ---------------------------------------------------------------------------

    def _write_stdin(self) -> None:
        try:
            written = os.write(self._stdin_fd, self._stdin_data)
        except BlockingIOError:
            written = 0
        except OSError as exc:  # EPIPE: the command exited or closed stdin without reading
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                log.warning("pid %s: writing stdin failed: %s", self.pid, exc)
            self._close_stdin()
            return
        self._stdin_data = self._stdin_data[written:]
        if not self._stdin_data:
            self._close_stdin()
        elif written == 0 or not self._stdin_registered:
            self._register_stdin()

    def _register_stdin(self) -> None:
        if not self._stdin_registered:
            self._stdin_registered = True
            self._fds.watch(self._stdin_fd, WRITE, self._on_writable)

    def _on_writable(self, fd: int, events: int) -> None:
        self._write_stdin()

    def _close_stdin(self) -> None:
        if self._stdin_fd < 0:
            return
        if self._stdin_registered:
            self._fds.unwatch(self._stdin_fd)
            self._stdin_registered = False
        os.close(self._stdin_fd)
        self._stdin_fd = -1
        self._stdin_data = b""

    # -- output --------------------------------------------------------------------------

    def _on_readable(self, fd: int, events: int) -> None:
        # A full read means more is probably waiting: keep reading (up to a bound, so one
        # chatty command cannot starve the loop) instead of going back to epoll each time.
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return
            if not data:
                self._close_pipe(fd)
                self._maybe_finish()
                return
            stream = self._names[fd]
            if self.output.feed(stream, data) and self._listener is not None:
                self._listener(stream, data)
            if len(data) < _READ_SIZE:
                return

    def _close_pipe(self, fd: int) -> None:
        if fd in self._open_pipes:
            self._open_pipes.discard(fd)
            self._fds.unwatch(fd)
            os.close(fd)

    # -- exit ----------------------------------------------------------------------------

    def _on_timeout(self) -> None:
        if not self._exited:
            self.timed_out = True
            log.info("pid %s: timed out after %ss, killing its group", self.pid, self.spec.timeout)
            self._kill_tree()

    def _on_exit(self, fd: int, events: int) -> None:
        # The main process is a zombie now: its pid (the group id) cannot be reused until we
        # reap it, so this kill reaches only what it left behind in its group (and, with a
        # cgroup, whatever it left anywhere).
        self._kill_tree()
        reaped = self._reap()
        if reaped is None:
            return
        self.returncode, self._rusage = reaped
        self._exited = True
        self._fds.unwatch(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        self._loop.remove_timeout(self._deadline)
        self._close_stdin()
        if self._open_pipes:
            self._drain_timer = self._loop.call_later(self._engine.drain_grace, self._stop_draining)
        self._maybe_finish()

    def _stop_draining(self) -> None:
        self._drain_timer = None
        for fd in list(self._open_pipes):
            # A grandchild that escaped the group (setsid) still holds the pipe: read what
            # is there and let go.
            self._on_readable(fd, READ)
            self._close_pipe(fd)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self._exited or self._open_pipes or self.result.done():
            return
        if self._drain_timer is not None:
            self._loop.remove_timeout(self._drain_timer)
            self._drain_timer = None
        self._engine._finished(self)
        assert self.returncode is not None and self._rusage is not None
        tree = None
        oom_killed = False
        if self.enclosure is not None:
            tree = self.enclosure.usage()
            oom_killed = self.enclosure.close()
        result = CommandResult(
            status=self.returncode,
            output=self.output,
            timed_out=self.timed_out,
            cancelled=self.cancelled,
            duration=time.monotonic() - self.started,
            oom_killed=oom_killed,
            usage=Usage.of(self._rusage, self.queued, tree),
        )
        if self._engine.on_large_output is not None and self.output.size >= LARGE_OUTPUT:
            self._engine.on_large_output()
        for callback in self._on_finish:
            callback(result)
        self.result.set_result(result)
