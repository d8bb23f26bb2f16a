"""The launcher's one door through its own API, on a real engine and admission, without
HTTP: a `Reservation` holds its caller's share and a slot (or a place in the queue) from
`Launcher.reserve` on, and whichever way it ends — its command started and ended, cancelled
while queued or before its start, a spawn that fails, the instance stopping — every one of
them comes back, once."""

import asyncio
import contextlib
import dataclasses
import itertools
import os
import resource
import shutil
from collections.abc import Iterator

import pytest

from taskrunner.config import Config
from taskrunner.errors import (
    OutOfResources,
    ProgramNotAllowed,
    ServiceUnavailable,
    SpawnError,
    TooManyRequests,
)
from taskrunner.process.admission import Admission, Share
from taskrunner.process.allowlist import Allowlist
from taskrunner.process.confinement import Confinement
from taskrunner.process.containment import Containment, containment_from_config
from taskrunner.process.engine import CommandSpec, ProcessEngine
from taskrunner.process.launcher import Launcher, Policy, Reservation


class World:
    """A launcher over a real engine and admission, and one caller's share."""

    def __init__(self, max_running: int, max_queued: int, share: int,
                 containment: Containment | None, allowlist: Allowlist | None) -> None:
        self.containment = containment or Containment()
        self.engine = ProcessEngine(max_output=1 << 16,
                                    base_env={**os.environ, **self.containment.env})
        self.admission = Admission(max_running, max_queued)
        self.launcher = Launcher(self.engine, admission=self.admission)
        self.share = Share("ci", share)
        self.policy = Policy(allowlist, self.containment, self.share)

    def reserve(self, *args: str, cwd: str | None = None) -> Reservation:
        return self.launcher.reserve(CommandSpec(list(args), 10.0, cwd=cwd), self.policy)

    @property
    def held(self) -> tuple[int, int, int]:
        """(slots taken, places in the queue, the share held)."""
        return self.admission.running, self.admission.queued, self.share.held


@pytest.fixture
def world(io_loop):
    made: list[World] = []

    def make(max_running: int = 1, max_queued: int = 2, share: int = 4,
             containment: Containment | None = None,
             allowlist: Allowlist | None = None) -> World:
        made.append(World(max_running, max_queued, share, containment, allowlist))
        return made[-1]

    yield make
    for w in made:
        w.admission.close()
        w.engine.kill_all()
        io_loop.run_sync(lambda w=w: w.engine.wait_all(10))
        w.engine.close()
        w.containment.close()


@pytest.mark.gen_test
async def test_a_started_command_gives_its_slot_and_share_back_when_it_ends(world):
    w = world()
    reservation = w.reserve("true")
    assert reservation.ready.done() and w.held == (1, 0, 1)
    command = reservation.start()
    assert w.held == (1, 0, 1)  # the command holds them now
    result = await command.result
    assert result.status == 0 and w.held == (0, 0, 0)
    reservation.cancel()  # after its start: nothing more to give
    assert w.held == (0, 0, 0)


@pytest.mark.gen_test
async def test_cancelled_while_queued_it_leaves_the_queue_and_gives_its_share_back(world):
    w = world()
    first, second = w.reserve("true"), w.reserve("true")
    assert not second.ready.done() and w.held == (1, 1, 2)
    second.cancel()
    assert w.held == (1, 0, 1)
    second.cancel()  # twice: once only
    assert w.held == (1, 0, 1)
    with pytest.raises(RuntimeError):
        second.start()
    first.cancel()
    assert w.held == (0, 0, 0)


@pytest.mark.gen_test
async def test_cancelled_before_its_start_its_slot_goes_to_the_next_in_line(world):
    w = world()
    first, second = w.reserve("true"), w.reserve("echo", "second")
    first.cancel()
    assert second.ready.done() and w.held == (1, 0, 1)
    result = await second.start().result
    assert result.stdout == "second\n" and w.held == (0, 0, 0)


@pytest.mark.gen_test
async def test_a_spawn_that_fails_gives_everything_back_and_the_next_in_line_starts(world):
    w = world()
    # Without an allowlist or a wrapper, nothing looks for the program before the spawn.
    doomed, next_in_line = w.reserve("/nonexistent/program"), w.reserve("true")
    assert w.held == (1, 1, 2)
    with pytest.raises(SpawnError):
        doomed.start()
    assert next_in_line.ready.done() and w.held == (1, 0, 1)
    await next_in_line.start().result
    assert w.held == (0, 0, 0)


@contextlib.contextmanager
def no_fd_left() -> Iterator[None]:
    """This process can open no more files (RLIMIT_NOFILE at its lowest free fd) within
    the block: a spawn's pipes cannot be made."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    free = next(fd for fd in itertools.count() if not _is_open(fd))
    resource.setrlimit(resource.RLIMIT_NOFILE, (free, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("failing", ["its work directory", "the spawn"])
async def test_a_sandboxed_start_that_fails_gives_everything_back(world, failing):
    containment = containment_from_config(dataclasses.replace(Config(port=0), sandbox=True),
                                          os.environ)
    work_root = containment.sandbox.work_root
    w = world(containment=containment)
    reservation = w.reserve("true")
    if failing == "its work directory":
        shutil.rmtree(work_root)  # no work directory can be made now
        with pytest.raises(OutOfResources, match="work directory"):
            reservation.start()
    else:
        with no_fd_left(), pytest.raises(OutOfResources, match="retry later"):
            reservation.start()
        assert os.listdir(work_root) == []  # the one it made went with the failed spawn
    assert w.held == (0, 0, 0)


@pytest.mark.gen_test
@pytest.mark.parametrize("way", ["start", "wait"])
async def test_queued_when_the_instance_stops_its_share_comes_back(world, way):
    w = world()
    first, second = w.reserve("true"), w.reserve("true")
    w.admission.close()  # what shutdown does first
    assert second.ready.done()
    with pytest.raises(ServiceUnavailable):
        if way == "start":
            second.start()
        else:
            await second.wait()
    assert w.held == (1, 0, 1)
    first.cancel()
    assert w.held == (0, 0, 0)


@pytest.mark.gen_test
async def test_a_cancelled_wait_leaves_the_queue_or_passes_on_the_slot_it_was_handed(world):
    w = world()
    first, second, third = w.reserve("true"), w.reserve("true"), w.reserve("true")
    waiting = asyncio.ensure_future(second.wait())
    await asyncio.sleep(0)
    first.cancel()  # the slot goes to `second` ...
    waiting.cancel()  # ... whose wait is cancelled before it runs: it passes the slot on
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert third.ready.done() and w.held == (1, 0, 1)
    third.cancel()
    assert w.held == (0, 0, 0)


@pytest.mark.gen_test
async def test_the_checks_run_when_it_is_made_and_a_refusal_holds_nothing(world, tmp_path):
    w = world(max_queued=1, share=3)
    first = w.reserve("true")
    # Queued: its program and cwd are checked now, not after the wait.
    with pytest.raises(SpawnError, match="no-such-program"):
        w.reserve("no-such-program-xyz")
    with pytest.raises(SpawnError, match="working directory"):
        w.reserve("true", cwd=str(tmp_path / "gone"))
    assert w.held == (1, 0, 1)
    second = w.reserve("true")
    with pytest.raises(TooManyRequests, match="waiting"):  # the queue is full
        w.reserve("true")
    assert w.held == (1, 1, 2)
    w.share.limit = 2
    with pytest.raises(TooManyRequests, match="'ci'"):  # the caller's share is used
        w.reserve("true")
    assert w.held == (1, 1, 2)
    second.cancel()
    first.cancel()
    assert w.held == (0, 0, 0)


@pytest.mark.gen_test
async def test_a_program_off_the_allowlist_is_refused_before_anything_is_taken(world):
    w = world(allowlist=Allowlist(["/bin/echo"], {"PATH": "/usr/bin:/bin"}))
    with pytest.raises(ProgramNotAllowed):
        w.reserve("sh", "-c", "true")
    assert w.held == (0, 0, 0)
    result = await w.reserve("echo", "allowed").start().result
    assert result.stdout == "allowed\n" and w.held == (0, 0, 0)


@pytest.mark.gen_test
async def test_the_wrappers_reach_the_spawn_as_one_prefix(world):
    env = os.path.realpath(shutil.which("env") or "/usr/bin/env")
    containment = Containment(prefix=(env, "WRAPPED=outer", env, "INNER=yes"))
    w = world(containment=containment)
    reservation = w.reserve("sh", "-c", "echo $WRAPPED $INNER")
    confinement = Confinement.enter(reservation.spec, containment, None)
    assert confinement.prefix == containment.prefix and confinement.enclosure is None
    result = await reservation.start().result
    assert result.stdout == "outer yes\n" and w.held == (0, 0, 0)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
@pytest.mark.gen_test(timeout=30)
async def test_a_sandboxed_confinement_runs_in_its_own_work_directory_and_removes_it(world):
    config = dataclasses.replace(Config(port=0), sandbox=True, limit_nofile=256)
    containment = containment_from_config(config, os.environ)
    w = world(containment=containment)
    reservation = w.reserve("sh", "-c", "pwd; ulimit -n")
    spec = dataclasses.replace(reservation.spec, cwd="/usr")
    confinement = Confinement.enter(spec, containment, None)
    # prlimit, then bubblewrap (which changes into the cwd itself), outermost first.
    bwrap = containment.prefix.index("--") + 1
    assert confinement.prefix[:bwrap] == containment.prefix
    assert confinement.prefix[bwrap] == containment.sandbox.bwrap
    assert confinement.prefix[confinement.prefix.index("--chdir") + 1] == "/usr"
    assert confinement.spec.cwd is None and confinement.enclosure is confinement
    confinement.close()
    confinement.close()  # a second close does nothing
    assert os.listdir(containment.sandbox.work_root) == []
    result = await reservation.start().result
    work, nofile = result.stdout.split()
    assert os.path.dirname(work) == containment.sandbox.work_root and nofile == "256"
    assert not os.path.exists(work) and w.held == (0, 0, 0)
