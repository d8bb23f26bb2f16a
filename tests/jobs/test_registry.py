"""The job registry through its own API, on a real launcher and engine, without HTTP:
submit, queue for a slot, a caller's share, cancel, expiry and the cap on kept jobs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from helpers import pid_alive, until

from taskrunner.errors import ProgramNotAllowed, TooManyRequests
from taskrunner.jobs.job import Job, JobState
from taskrunner.jobs.registry import JobRegistry
from taskrunner.process.admission import Admission, Share
from taskrunner.process.allowlist import Allowlist
from taskrunner.process.engine import CommandSpec, ProcessEngine
from taskrunner.process.launcher import Launcher, Policy


def _in_registry(io_loop: Any, body: Callable[[JobRegistry], Awaitable[Any]], *,
                 max_running: int = 4, max_queued: int = 8, job_ttl: float = 60,
                 max_jobs: int = 100, allowlist: Allowlist | None = None) -> Any:
    """Run ``body(registry)`` on a fresh registry over a real launcher and engine; every
    command is killed and reaped and everything closed afterwards, whatever happened."""

    async def run() -> Any:
        engine = ProcessEngine(max_output=1 << 16)
        admission = Admission(max_running, max_queued)
        registry = JobRegistry(Launcher(engine, allowlist=allowlist, admission=admission),
                               "t", max_output=1 << 16, job_ttl=job_ttl, max_jobs=max_jobs)
        try:
            return await body(registry)
        finally:
            # As the server shuts down: the queue first, so that no queued job starts (and
            # is left unreaped) while the running ones are killed.
            admission.close()
            registry.cancel_running()
            await engine.wait_all(10)
            registry.close()
            engine.close()

    return io_loop.run_sync(run, timeout=60)


async def _ended(job: Job) -> Job:
    await until(lambda: job.done)
    return job


def _sleeper() -> CommandSpec:
    return CommandSpec(args=["sleep", "100"], timeout=60)


def test_a_job_runs_to_its_end_and_keeps_its_output(io_loop):
    async def body(registry: JobRegistry) -> Any:
        job = await registry.submit(CommandSpec(
            args=["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10), caller="ci")
        assert job.state is JobState.RUNNING and registry.get(job.id) is job
        await _ended(job)
        return job, await registry.describe(job)

    job, described = _in_registry(io_loop, body)
    assert job.state is JobState.EXITED and job.status == 3
    assert (described["stdout"], described["stderr"], described["caller"]) == (
        "out\n", "err\n", "ci")


def test_a_timeout_ends_the_job_timed_out(io_loop):
    async def body(registry: JobRegistry) -> Job:
        return await _ended(await registry.submit(CommandSpec(args=["sleep", "100"],
                                                              timeout=0.3)))

    job = _in_registry(io_loop, body)
    assert job.state is JobState.TIMED_OUT and job.status == -9


def test_with_every_slot_busy_a_job_queues_and_starts_when_one_frees(io_loop):
    async def body(registry: JobRegistry) -> Any:
        first = await registry.submit(_sleeper())
        second = await registry.submit(CommandSpec(args=["echo", "second"], timeout=10))
        assert (first.state, second.state) == (JobState.RUNNING, JobState.QUEUED)
        await registry.cancel(first)
        await _ended(second)
        return first, second, await registry.describe(second)

    first, second, described = _in_registry(io_loop, body, max_running=1)
    assert first.state is JobState.CANCELLED
    assert second.state is JobState.EXITED and described["stdout"] == "second\n"


def test_with_the_queue_full_a_job_is_refused_and_nothing_is_kept(io_loop):
    async def body(registry: JobRegistry) -> Any:
        await registry.submit(_sleeper())
        await registry.submit(_sleeper())  # the one queue place
        kept = set(registry.jobs)
        with pytest.raises(TooManyRequests):
            await registry.submit(_sleeper())
        return kept, set(registry.jobs)

    kept, after = _in_registry(io_loop, body, max_running=1, max_queued=1)
    assert after == kept and len(kept) == 2


def test_a_cancelled_queued_job_never_starts_and_gives_its_place_back(io_loop, tmp_path):
    marker = tmp_path / "ran"

    async def body(registry: JobRegistry) -> Any:
        running = await registry.submit(_sleeper())
        queued = await registry.submit(CommandSpec(args=["touch", str(marker)], timeout=10))
        await registry.cancel(queued)
        assert queued.state is JobState.CANCELLED
        # Its place is free again: another job may queue behind the running one.
        again = await registry.submit(CommandSpec(args=["true"], timeout=10))
        assert again.state is JobState.QUEUED
        await registry.cancel(running)
        return await _ended(again)

    again = _in_registry(io_loop, body, max_running=1, max_queued=1)
    assert again.state is JobState.EXITED and not marker.exists()


def test_a_callers_share_holds_queued_jobs_too_and_is_given_back_at_their_end(io_loop):
    share = Share("ci", 2)

    async def body(registry: JobRegistry) -> Any:
        policy = Policy(share=share)
        running = await registry.submit(_sleeper(), policy, caller="ci")
        queued = await registry.submit(_sleeper(), policy, caller="ci")
        assert queued.state is JobState.QUEUED
        with pytest.raises(TooManyRequests) as refused:
            await registry.submit(_sleeper(), policy, caller="ci")
        await registry.cancel(queued)
        await registry.cancel(running)
        # Both places came back with their jobs' ends.
        third = await registry.submit(CommandSpec(args=["true"], timeout=10), policy,
                                      caller="ci")
        return refused.value, await _ended(third)

    refused, third = _in_registry(io_loop, body, max_running=1, max_queued=4)
    assert "ci" in refused.message
    assert third.state is JobState.EXITED


def test_a_program_off_the_allowlist_is_refused_before_a_job_exists(io_loop):
    async def body(registry: JobRegistry) -> Any:
        with pytest.raises(ProgramNotAllowed):
            await registry.submit(CommandSpec(args=["sh", "-c", "true"], timeout=10))
        return dict(registry.jobs)

    allowlist = Allowlist(["/bin/echo"], {"PATH": "/usr/bin:/bin"})
    assert _in_registry(io_loop, body, allowlist=allowlist) == {}


def test_cancel_kills_a_running_jobs_command(io_loop):
    async def body(registry: JobRegistry) -> Any:
        job = await registry.submit(_sleeper())
        pid = job.command.pid
        await registry.cancel(job)
        return job, pid

    job, pid = _in_registry(io_loop, body)
    assert job.state is JobState.CANCELLED and not pid_alive(pid)


def test_finished_jobs_expire_after_their_ttl(io_loop):
    async def body(registry: JobRegistry) -> Any:
        job = await _ended(await registry.submit(CommandSpec(args=["true"], timeout=10)))
        await until(lambda: job.id not in registry.jobs, timeout=10)
        return job

    _in_registry(io_loop, body, job_ttl=0.3)


def test_past_max_jobs_the_oldest_finished_jobs_go_first(io_loop):
    async def body(registry: JobRegistry) -> Any:
        running = await registry.submit(_sleeper())
        done = [await _ended(await registry.submit(CommandSpec(args=["true"], timeout=10)))
                for _ in range(4)]
        await registry.submit(CommandSpec(args=["true"], timeout=10))
        return running, done, set(registry.jobs)

    running, done, kept = _in_registry(io_loop, body, max_jobs=4)
    assert running.id in kept  # a running job is never dropped
    assert done[0].id not in kept and done[-1].id in kept
    assert len(kept) <= 4
