"""Prometheus metrics of one instance, in the text format ``GET /metrics`` serves
(`taskrunner.web.service.MetricsHandler`).

Each `Metrics` owns a `CollectorRegistry` of its own (no module-level registry), so every
test and every instance has its own counters.

No series carries an ``instance`` or ``job`` label: Prometheus attaches those to every
series it scrapes (the target's address, the scrape job) and would rename ours to
``exported_instance``. Scrape each instance directly; its target labels tell the instances
apart. The instance's ``--instance`` name (the prefix of its job ids) is the ``name`` label
of ``taskrunner_info``. The ``_created`` series of counters and histograms are not exported
(filtered out per registry, not switched off process-wide in prometheus_client).

The launcher reports commands through the `CommandObserver` methods (`command_started`,
`spawn_failed`); admission reports each wait for a slot through `queue_waited`; the app
reports each finished request through `request_done`. Gauges that other objects already
know (commands running and queued, jobs by state) are read at scrape time.
"""

from __future__ import annotations

import collections
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from tornado.web import RequestHandler

from taskrunner import __version__
from taskrunner.errors import StartError
from taskrunner.jobs.job import JobState
from taskrunner.process.engine import Command, CommandResult, CommandSpec

# From a few milliseconds (/bin/true) up to --max-timeout's default of an hour.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0, 900.0, 3600.0)
# CPU seconds: a millisecond (/bin/true) up to an hour of one CPU.
CPU_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)
# Peak memory: 1 MiB (a small C program) up to 16 GiB, by powers of four.
MEMORY_BUCKETS = tuple(float(1 << shift) for shift in range(20, 35, 2))


class StoreHealth(Protocol):
    """What the metrics read of a job store (`taskrunner.jobs.store.JobStore`)."""

    healthy: bool
    on_write_failure: Any


class CallbackOutcomes(Protocol):
    """What the metrics set on a callback sender (`taskrunner.jobs.callbacks`)."""

    on_outcome: Any


class Metrics:
    """The counters, gauges and histograms of one instance, in a registry of their own.

    ``running`` and ``queued`` return how many commands run and wait for a slot now;
    ``job_states`` the state of every job kept. Each is called at scrape time.
    """

    def __init__(self, name: str, running: Callable[[], float] | None = None,
                 queued: Callable[[], float] | None = None,
                 job_states: Callable[[], Iterable[JobState]] | None = None) -> None:
        self.name = name
        self.registry = CollectorRegistry()
        reg = self.registry
        self._requests_by_status: dict[tuple[int, str], Any] = {}
        # caller: a name from --callers (or token / anonymous; "" before the token is
        # checked): bounded by the file, never taken from the request.
        self._requests = Counter("taskrunner_http_requests",
                                 "HTTP requests answered, by status and caller",
                                 ["status", "caller"], registry=reg)
        self.started = Counter("taskrunner_commands_started", "commands started", registry=reg)
        # action: a name from --actions, bounded by the file, never taken from the request
        # unchecked (an unknown name is a 404 before anything counts).
        self._actions = Counter("taskrunner_action_commands_started",
                                "commands started by an action (/actions/<name>, and its "
                                "jobs as they are accepted), by action", ["action"],
                                registry=reg)
        self.ended = 0
        """Commands that ended since start (the counter below, readable without a scrape:
        /healthz tells it to any caller, for the page's completions per second)."""
        self.finished = Counter("taskrunner_commands_finished", "commands that ended",
                                registry=reg)
        self.timeouts = Counter("taskrunner_command_timeouts",
                                "commands killed because they ran past their timeout",
                                registry=reg)
        self.kills = Counter("taskrunner_command_kills",
                             "commands ended by SIGKILL: timeout, cancel, client gone, "
                             "shutdown, or killed from outside", registry=reg)
        self.oom_kills = Counter("taskrunner_command_oom_kills",
                                 "commands a process of which the memory limit "
                                 "(--memory-max) killed", registry=reg)
        self.spawn_failures = Counter("taskrunner_command_spawn_failures",
                                      "commands that could not be started (422)", registry=reg)
        self.duration = Histogram("taskrunner_command_duration_seconds",
                                  "wall-clock time from spawn to reaped, per command",
                                  buckets=DURATION_BUCKETS, registry=reg)
        self.cpu = Histogram("taskrunner_command_cpu_seconds",
                             "CPU seconds per command, user and system: its cgroup's with "
                             "cgroup limits, else those of its main process and what it "
                             "waited for", buckets=CPU_BUCKETS, registry=reg)
        self.memory = Histogram("taskrunner_command_memory_peak_bytes",
                                "peak memory per command: its cgroup's with a memory limit, "
                                "else the largest resident set of its main process and what "
                                "it waited for", buckets=MEMORY_BUCKETS, registry=reg)
        self.running = Gauge("taskrunner_commands_running", "commands running now",
                             registry=reg)
        if running is not None:
            self.running.set_function(running)
        self.queued = Gauge("taskrunner_commands_queued",
                            "commands waiting for a free slot (--max-running) now", registry=reg)
        if queued is not None:
            self.queued.set_function(queued)
        self.queue_wait = Histogram(
            "taskrunner_command_queue_wait_seconds",
            "how long a command that found no free slot waited for one, however the wait "
            "ended (a slot, its caller gone, shutdown)", buckets=DURATION_BUCKETS, registry=reg)
        if job_states is not None:
            reg.register(_JobsByState(job_states))
        Gauge("taskrunner_info", "always 1; the labels say which version runs, and the "
              "instance's --instance name", ["version", "name"], registry=reg).labels(
                  version=__version__, name=name).set(1)
        Gauge("taskrunner_start_time_seconds", "when this instance started, Unix time",
              registry=reg).set_to_current_time()

    def watch_job_store(self, store: StoreHealth) -> None:
        """Export whether the job store's writes succeed, and how many failed."""
        up = Gauge("taskrunner_job_store_up",
                   "1 while the job index writes, 0 while its writes fail",
                   registry=self.registry)
        up.set_function(lambda: 1.0 if store.healthy else 0.0)
        failures = Counter("taskrunner_job_store_write_failures",
                           "job store transactions that failed (each retry counts)",
                           registry=self.registry)
        store.on_write_failure = failures.inc  # thread-safe: called by the writer thread

    def watch_callbacks(self, sender: CallbackOutcomes) -> None:
        """Count completion callbacks by how they ended."""
        ended = Counter("taskrunner_callbacks", "completion callbacks that ended, by outcome: "
                        "delivered, failed (every try), refused (host off --callback-allow)",
                        ["outcome"], registry=self.registry)
        for outcome in ("delivered", "failed", "refused"):
            ended.labels(outcome=outcome)
        sender.on_outcome = lambda outcome: ended.labels(outcome=outcome).inc()

    # -- the launcher's observer -------------------------------------------------------

    def command_started(self, command: Command) -> None:
        """Count a started command and time it until it ends."""
        self.started.inc()
        command.on_finish(self._command_ended)

    def spawn_failed(self, spec: CommandSpec, error: StartError) -> None:
        """Count a command that could not start."""
        self.spawn_failures.inc()

    def _command_ended(self, result: CommandResult) -> None:
        self.ended += 1
        self.finished.inc()
        self.duration.observe(result.duration)
        if result.usage is not None:
            self.cpu.observe(result.usage.cpu_seconds)
            self.memory.observe(result.usage.memory_bytes)
        if result.timed_out:
            self.timeouts.inc()
        if result.timed_out or result.cancelled or result.status == -signal.SIGKILL:
            self.kills.inc()
        if result.oom_killed:
            self.oom_kills.inc()

    def action_started(self, action: str) -> None:
        """Count a command started (or a job accepted) for the action ``action``."""
        self._actions.labels(action=action).inc()

    # -- admission ---------------------------------------------------------------------

    def queue_waited(self, seconds: float) -> None:
        """Record one wait for a slot that has ended."""
        self.queue_wait.observe(seconds)

    # -- requests ----------------------------------------------------------------------

    def request_done(self, handler: RequestHandler) -> None:
        """Count one answered request by its status and caller."""
        status = handler.get_status()
        caller = getattr(getattr(handler, "caller", None), "name", "")
        key = (status, caller)
        counter = self._requests_by_status.get(key)
        if counter is None:  # labels() sorts and looks up on every call: once per pair
            counter = self._requests.labels(status=str(status), caller=caller)
            self._requests_by_status[key] = counter
        counter.inc()

    def exposition(self) -> bytes:
        """Everything in the Prometheus text format, without ``_created`` series."""
        return generate_latest(_WithoutCreated(self.registry))


class _JobsByState:
    # A collector: counts the jobs by state at each scrape; every state is present, 0 or not.

    def __init__(self, job_states: Callable[[], Iterable[JobState]]) -> None:
        self._job_states = job_states

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        counts = collections.Counter(self._job_states())
        family = self._family()
        for state in JobState:
            family.add_metric([state.value], counts[state])
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("taskrunner_jobs", "jobs kept now, by state", labels=["state"])


class _WithoutCreated:
    # What generate_latest reads: the registry's families, less their "<name>_created"
    # samples (a counter's or histogram's creation time, which nobody graphs).

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            created = family.name + "_created"
            family.samples = [s for s in family.samples if s.name != created]
            yield family
