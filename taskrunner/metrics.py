"""Prometheus metrics of one instance, and ``GET /metrics`` that serves them.

Each `Metrics` owns a `CollectorRegistry` of its own (no module-level registry), so every
test and every instance has its own counters. Every series carries an ``instance`` label
(``--instance``, by default the port), so the four instances of a stack can be told
apart once scraped and summed across them.

The launcher reports commands through the `CommandObserver` methods (`command_started`,
`spawn_failed`); the app reports each finished request through `request_done`.
"""

from __future__ import annotations

import signal
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from tornado.web import RequestHandler

from taskrunner import __version__
from taskrunner.engine import Command, CommandResult, CommandSpec
from taskrunner.errors import NotFound, StartError
from taskrunner.handlers import JSONHandler

# From a few milliseconds (/bin/true) up to --max-timeout's default of an hour.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0, 900.0, 3600.0)


class StoreHealth(Protocol):
    """What the metrics read of a job store (`taskrunner.job_store.JobStore`)."""

    healthy: bool
    on_write_failure: Any


class Metrics:
    """The counters, gauges and histogram of one instance, in a registry of their own."""

    def __init__(self, instance: str, running: Any = None) -> None:
        self.instance = instance
        self.registry = CollectorRegistry()
        label = {"instance": instance}
        reg = self.registry
        self._requests_by_status: dict[int, Any] = {}
        self._requests = Counter("taskrunner_http_requests", "HTTP requests answered, by status",
                                 ["instance", "status"], registry=reg)
        self.started = Counter("taskrunner_commands_started", "commands started",
                               ["instance"], registry=reg).labels(**label)
        self.finished = Counter("taskrunner_commands_finished", "commands that ended",
                                ["instance"], registry=reg).labels(**label)
        self.timeouts = Counter("taskrunner_command_timeouts",
                                "commands killed because they ran past their timeout",
                                ["instance"], registry=reg).labels(**label)
        self.kills = Counter("taskrunner_command_kills",
                             "commands ended by SIGKILL: timeout, cancel, client gone, "
                             "shutdown, or killed from outside", ["instance"],
                             registry=reg).labels(**label)
        self.spawn_failures = Counter("taskrunner_command_spawn_failures",
                                      "commands that could not be started (422)",
                                      ["instance"], registry=reg).labels(**label)
        self.duration = Histogram("taskrunner_command_duration_seconds",
                                  "wall-clock time from spawn to reaped, per command",
                                  ["instance"], buckets=DURATION_BUCKETS,
                                  registry=reg).labels(**label)
        self.running = Gauge("taskrunner_commands_running", "commands running now",
                             ["instance"], registry=reg).labels(**label)
        if running is not None:
            self.running.set_function(running)
        Gauge("taskrunner_info", "always 1; the labels say which version runs",
              ["instance", "version"], registry=reg).labels(
                  instance=instance, version=__version__).set(1)
        Gauge("taskrunner_start_time_seconds", "when this instance started, Unix time",
              ["instance"], registry=reg).labels(**label).set_to_current_time()

    def watch_job_store(self, store: StoreHealth) -> None:
        """Export whether the job store's writes succeed, and how many failed."""
        label = {"instance": self.instance}
        up = Gauge("taskrunner_job_store_up",
                   "1 while the job store (--state-dir) writes, 0 while its writes fail",
                   ["instance"], registry=self.registry).labels(**label)
        up.set_function(lambda: 1.0 if store.healthy else 0.0)
        failures = Counter("taskrunner_job_store_write_failures",
                           "job store transactions that failed (each retry counts)",
                           ["instance"], registry=self.registry).labels(**label)
        store.on_write_failure = failures.inc  # thread-safe: called by the writer thread

    # -- the launcher's observer -------------------------------------------------------

    def command_started(self, command: Command) -> None:
        """Count a started command and time it until it ends."""
        self.started.inc()
        command.on_finish(self._command_ended)

    def spawn_failed(self, spec: CommandSpec, error: StartError) -> None:
        """Count a command that could not start."""
        self.spawn_failures.inc()

    def _command_ended(self, result: CommandResult) -> None:
        self.finished.inc()
        self.duration.observe(result.duration)
        if result.timed_out:
            self.timeouts.inc()
        if result.timed_out or result.cancelled or result.status == -signal.SIGKILL:
            self.kills.inc()

    # -- requests ----------------------------------------------------------------------

    def request_done(self, handler: RequestHandler) -> None:
        """Count one answered request by its status."""
        status = handler.get_status()
        counter = self._requests_by_status.get(status)
        if counter is None:  # labels() sorts and looks up on every call: once per status
            counter = self._requests.labels(instance=self.instance, status=str(status))
            self._requests_by_status[status] = counter
        counter.inc()

    def exposition(self) -> bytes:
        """Everything in the Prometheus text format."""
        return generate_latest(self.registry)


class MetricsHandler(JSONHandler):
    """``GET /metrics``: the instance's metrics in the Prometheus text format."""

    def get(self) -> None:
        metrics = getattr(self.ctx, "metrics", None)
        if metrics is None:
            raise NotFound("this instance keeps no metrics")
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(metrics.exposition())
