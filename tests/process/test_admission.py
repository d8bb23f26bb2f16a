"""--max-running and --max-queued: a fair queue, 429 beyond it, and leaving it on disconnect.

A blocker holds the slot until the test opens its gate (a file), so what is queued behind it
does not depend on how fast a loaded machine runs.
"""

import asyncio
import json
import resource

import pytest
from conftest import with_config
from helpers import PY, until, wait_for
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from taskrunner.config import Config
from taskrunner.errors import ServiceUnavailable, TooManyRequests
from taskrunner.process.admission import Admission, default_max_running


def admission(instance):
    return instance.ctx.launcher.admission


async def blocked(instance, gate):
    """A /run holding the only slot until ``gate`` is opened; returns its task once running."""
    task = asyncio.ensure_future(instance.run({"args": ["sh", "-c", wait_for(gate)]}))
    await until(lambda: instance.ctx.engine.running == 1)
    return task


@pytest.mark.gen_test(timeout=20)
@with_config(max_running=1, max_queued=1)
async def test_beyond_running_and_queued_limits_a_429_with_retry_after(instance, tmp_path):
    first = await blocked(instance, tmp_path / "go")
    second = asyncio.ensure_future(instance.run({"args": ["echo", "second"]}))
    await until(lambda: admission(instance).queued == 1)
    response = await instance.request("POST", "/run", {"args": ["echo", "third"]})
    assert response.code == 429
    assert response.headers["Retry-After"] == "1"
    assert json.loads(response.body)["error"] == "too_many_requests"
    (tmp_path / "go").touch()
    assert (await first)[0] == 200
    code, body = await second
    assert (code, body["stdout"]) == (200, "second\n")
    assert admission(instance).running == 0


@pytest.mark.gen_test(timeout=20)
@with_config(max_running=1, max_queued=4)
async def test_queued_requests_start_in_arrival_order(instance, tmp_path):
    blocker = await blocked(instance, tmp_path / "go")
    order = []

    async def run(n):
        _, body = await instance.run({"args": [PY, "-c", f"print({n})"]})
        order.append(int(body["stdout"]))

    waiters = []
    for n in range(4):
        waiters.append(asyncio.ensure_future(run(n)))
        await until(lambda n=n: admission(instance).queued == n + 1)
    (tmp_path / "go").touch()
    await asyncio.gather(blocker, *waiters)
    assert order == [0, 1, 2, 3]


@pytest.mark.gen_test(timeout=20)
@with_config(max_running=1, max_queued=1)
async def test_a_queued_requests_timeout_starts_when_its_command_starts(instance, tmp_path):
    first = await blocked(instance, tmp_path / "go")
    second = asyncio.ensure_future(instance.run({"args": ["sleep", "0.2"], "timeout": 1.0}))
    await until(lambda: admission(instance).queued == 1)
    # Not synchronisation: the request must spend longer in line than its whole timeout.
    await asyncio.sleep(1.5)
    (tmp_path / "go").touch()
    code, body = await second
    assert code == 200
    assert body["status"] == 0 and not body["timed_out"]
    await first


@pytest.mark.gen_test(timeout=20)
@with_config(max_running=1, max_queued=2)
async def test_a_caller_that_leaves_while_queued_leaves_the_queue(instance, tmp_path):
    marker = tmp_path / "started"
    blocker = await blocked(instance, tmp_path / "go")
    impatient = AsyncHTTPClient(force_instance=True)
    try:
        with pytest.raises(HTTPClientError) as caught:
            await impatient.fetch(instance.url + "/run", method="POST", request_timeout=0.3,
                                  body=json.dumps({"args": ["touch", str(marker)]}))
        assert caught.value.code == 599
    finally:
        impatient.close()
    await until(lambda: admission(instance).queued == 0)
    (tmp_path / "go").touch()
    assert (await blocker)[0] == 200
    # The slot went back, nobody took it, and the command never ran.
    code, body = await instance.run({"args": ["echo", "next"]})
    assert (code, body["stdout"]) == (200, "next\n")
    assert not marker.exists()
    assert admission(instance).running == 0


@pytest.mark.gen_test(timeout=20)
@with_config(max_running=1, max_queued=1)
async def test_a_command_that_cannot_start_gives_its_slot_back(instance):
    for _ in range(3):
        code, _ = await instance.run({"args": ["no-such-program-xyz"]})
        assert code == 422
    assert admission(instance).running == 0
    code, _ = await instance.run({"args": ["true"]})
    assert code == 200


@pytest.mark.gen_test(timeout=20)
@with_config(max_running=1, max_queued=1)
async def test_a_request_that_would_wait_for_a_missing_program_gets_its_422_at_once(
        instance, tmp_path):
    blocker = await blocked(instance, tmp_path / "go")
    code, body = await instance.run({"args": ["no-such-program-xyz"]})
    assert (code, body["error"]) == (422, "spawn_failed")  # while the slot is still held
    assert admission(instance).queued == 0 and admission(instance).running == 1
    (tmp_path / "go").touch()
    assert (await blocker)[0] == 200


async def acquire(gate):
    # What a Reservation does with its place in line: wait for the slot, leave if cancelled.
    waiter = gate.enqueue()
    try:
        await waiter
    except asyncio.CancelledError:
        gate.leave(waiter)
        raise


@pytest.mark.gen_test
async def test_a_slot_handed_to_a_waiter_cancelled_in_the_same_instant_is_passed_on():
    gate = Admission(max_running=1, max_queued=5)
    await acquire(gate)
    a = asyncio.ensure_future(acquire(gate))
    b = asyncio.ensure_future(acquire(gate))
    await asyncio.sleep(0)
    assert gate.queued == 2
    gate.release()  # hands the slot to a ...
    a.cancel()      # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await a
    await b  # so b gets it
    assert gate.running == 1 and gate.queued == 0
    gate.release()
    assert gate.running == 0


@pytest.mark.gen_test
async def test_closing_sends_waiters_a_503_and_refuses_newcomers():
    gate = Admission(max_running=1, max_queued=5)
    await acquire(gate)
    waiter = asyncio.ensure_future(acquire(gate))
    await asyncio.sleep(0)
    gate.close()
    with pytest.raises(ServiceUnavailable):
        await waiter
    with pytest.raises(ServiceUnavailable):
        await acquire(gate)


@pytest.mark.gen_test
async def test_a_full_queue_raises_too_many_requests():
    gate = Admission(max_running=1, max_queued=0)
    await acquire(gate)
    with pytest.raises(TooManyRequests):
        await acquire(gate)


def test_defaults_come_from_the_machine():
    limits = Admission.from_config(Config())
    assert limits.max_running == default_max_running() >= 1
    assert limits.max_queued == 2 * limits.max_running
    limits = Admission.from_config(Config(max_running=3))
    assert (limits.max_running, limits.max_queued) == (3, 6)
    limits = Admission.from_config(Config(max_running=3, max_queued=0))
    assert limits.max_queued == 0


@pytest.mark.gen_test(timeout=20)
@with_config(max_running=1, max_queued=2)
async def test_when_the_instance_stops_queued_requests_get_503(instance, tmp_path):
    blocker = await blocked(instance, tmp_path / "go")
    queued = asyncio.ensure_future(instance.run({"args": ["echo", "late"]}))
    await until(lambda: admission(instance).queued == 1)
    admission(instance).close()  # what Server.shutdown does first
    code, body = await queued
    assert (code, body["error"]) == (503, "shutting_down")
    (tmp_path / "go").touch()
    assert (await blocker)[0] == 200


@pytest.fixture
def open_files_for_200_commands():
    """Raise this process's soft open-file limit towards what 200 concurrent commands take
    here (each holds two pipes and a pidfd, its request both ends of a connection), as far
    as the hard limit allows without privilege; restore it afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.gen_test(timeout=60)
async def test_the_default_admits_200_concurrent_sleeping_commands(open_files_for_200_commands,
                                                                   instance):
    # The shared benchmark's W2: 200 connections each running `sleep 0.5`. Under the common
    # `ulimit -n 1024` (soft) the limit is raised above; where the hard limit is 1024 too,
    # the default is below 200 by design and the rest wait in line: all are still served.
    running_at_once = admission(instance).max_running
    queued = []

    async def watch():
        while True:
            queued.append(admission(instance).queued)
            await asyncio.sleep(0.01)

    watcher = asyncio.ensure_future(watch())
    try:
        results = await asyncio.gather(*(instance.run({"args": ["sleep", "0.5"]})
                                         for _ in range(200)))
    finally:
        watcher.cancel()
    assert [code for code, _ in results] == [200] * 200
    if running_at_once >= 200:
        assert max(queued) == 0  # all in one wave: nobody waited for a slot


@pytest.mark.gen_test
async def test_enqueue_takes_a_slot_or_a_place_at_once_and_a_place_handed_a_slot_holds_it():
    gate = Admission(max_running=1, max_queued=2)
    first = gate.enqueue()
    assert first.done() and gate.running == 1
    second, third = gate.enqueue(), gate.enqueue()
    assert not second.done() and gate.queued == 2
    with pytest.raises(TooManyRequests):
        gate.enqueue()
    gate.release()  # the slot goes to `second`, in line first
    assert second.done() and not third.done() and gate.running == 1 and gate.queued == 1
    assert gate.try_acquire() is False  # nobody else gets a slot past the line
    gate.leave(third)  # cancelled while waiting: leaves the line
    assert gate.queued == 0
    gate.release()  # `second`'s command ended
    assert gate.running == 0


@pytest.mark.gen_test
async def test_a_slot_reaching_a_place_given_up_is_passed_on():
    gate = Admission(max_running=1, max_queued=2)
    gate.enqueue()
    a, b = gate.enqueue(), gate.enqueue()
    gate.release()
    assert a.done()
    gate.leave(a)  # a had the slot: b gets it
    assert b.done() and gate.running == 1
    gate.leave(b)  # b gives it up too: nobody waits, it is free
    assert gate.running == 0 and gate.queued == 0


@pytest.mark.gen_test(timeout=20)
@with_config(max_running=1, max_queued=4)
async def test_a_callers_share_is_held_while_waiting_and_given_back_whatever_happens(
        instance, tmp_path):
    from taskrunner.errors import SpawnError
    from taskrunner.process.admission import Share
    from taskrunner.process.engine import CommandSpec
    from taskrunner.process.launcher import Policy

    launcher = instance.ctx.launcher
    share = Share("a", 1)
    policy = Policy(share=share)
    blocker = await blocked(instance, tmp_path / "go")  # the instance's only slot
    waiting = asyncio.ensure_future(launcher.launch(CommandSpec(["true"], 5.0), policy=policy))
    await until(lambda: admission(instance).queued == 1)
    assert share.held == 1  # waiting counts against the share
    with pytest.raises(TooManyRequests, match="'a'"):
        launcher.reserve(CommandSpec(["true"], 5.0), policy)
    waiting.cancel()  # its caller left the queue
    await until(lambda: admission(instance).queued == 0)
    assert share.held == 0
    (tmp_path / "go").touch()
    await blocker
    reservation = launcher.reserve(CommandSpec(["/nonexistent/program"], 5.0), policy)
    with pytest.raises(SpawnError):
        reservation.start()
    assert share.held == 0  # it could not start
    command = launcher.reserve(CommandSpec(["true"], 5.0), policy).start()
    assert share.held == 1
    await command.result
    assert share.held == 0 and admission(instance).running == 0
