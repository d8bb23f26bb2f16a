"""GET /metrics: what it counts, and that it fits a Prometheus server (promtool, labels)."""

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
from conftest import with_config
from helpers import until
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from taskrunner.metrics import Metrics
from taskrunner.web.peers import default_name


def samples(text):
    """Every sample of a text exposition: {(name, ((label, value), ...)): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(text, metric, /, **labels):
    return samples(text).get((metric, tuple(sorted(labels.items()))))


async def scrape(instance):
    response = await instance.request("GET", "/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return response.body.decode()


@pytest.mark.gen_test
@with_config(default_timeout=0.2)
async def test_metrics_count_commands_requests_timeouts_kills_and_spawn_failures(instance):
    await instance.run({"args": ["true"]})
    await instance.run({"args": ["sleep", "5"]})  # times out after 0.2 s
    await instance.run({"args": ["/nonexistent/program"]})
    text = await scrape(instance)
    assert sample(text, "taskrunner_commands_started_total") == 2
    assert sample(text, "taskrunner_command_timeouts_total") == 1
    assert sample(text, "taskrunner_command_kills_total") == 1
    assert sample(text, "taskrunner_command_spawn_failures_total") == 1
    assert sample(text, "taskrunner_command_duration_seconds_count") == 2
    assert sample(text, "taskrunner_commands_running") == 0
    assert sample(text, "taskrunner_http_requests_total", status="200",
                  caller="anonymous") == 2
    assert sample(text, "taskrunner_http_requests_total", status="422",
                  caller="anonymous") == 1


@pytest.mark.gen_test
async def test_no_series_has_a_label_prometheus_sets_itself_nor_a_created_twin(instance):
    # A scrape target already carries "instance" and "job": Prometheus would rename ours
    # to exported_instance / exported_job. The instance's name is on taskrunner_info.
    await instance.run({"args": ["true"]})
    await instance.request("POST", "/jobs", {"args": ["true"]})
    text = await scrape(instance)
    found = samples(text)
    assert found
    for name, labels in found:
        assert not {"instance", "job"} & {label for label, _ in labels}, (name, labels)
        assert not name.endswith("_created"), name
    assert sample(text, "taskrunner_info", name=default_name(instance.port), version="0.1.0") == 1


def test_dropping_created_series_leaves_prometheus_client_as_it_was():
    Metrics("a").exposition()
    # prometheus_client's own switch is process-wide; ours must not have flipped it.
    registry = CollectorRegistry()
    Counter("other", "another library's counter", registry=registry).inc()
    assert "other_created" in generate_latest(registry).decode()


def test_each_metrics_has_its_own_registry():
    a, b = Metrics("a"), Metrics("b")
    a.started.inc()
    assert sample(a.exposition().decode(), "taskrunner_commands_started_total") == 1
    text = b.exposition().decode()
    assert sample(text, "taskrunner_commands_started_total") == 0
    assert sample(text, "taskrunner_info", name="b", version="0.1.0") == 1
    assert 'name="a"' not in text


@pytest.mark.gen_test(timeout=30)
@with_config(max_running=1, max_queued=4)
async def test_commands_waiting_for_a_slot_and_how_long_they_waited(instance, tmp_path):
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    gate = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # the blocker reads until we write
    try:
        blocker = asyncio.ensure_future(instance.run({"args": ["head", "-c1", str(fifo)]}))

        async def running():
            return sample(await scrape(instance), "taskrunner_commands_running") == 1

        await until(running)
        submitted = time.monotonic()
        waiter = asyncio.ensure_future(instance.run({"args": ["true"]}))

        async def queued():
            return sample(await scrape(instance), "taskrunner_commands_queued") == 1

        await until(queued)
        os.write(gate, b"x")
        assert (await blocker)[0] == 200
        assert (await waiter)[0] == 200
        waited_at_most = time.monotonic() - submitted
    finally:
        os.close(gate)
    text = await scrape(instance)
    assert sample(text, "taskrunner_commands_queued") == 0
    # Only the command that found no free slot waited; the blocker started at once.
    assert sample(text, "taskrunner_command_queue_wait_seconds_count") == 1
    assert 0 < sample(text, "taskrunner_command_queue_wait_seconds_sum") < waited_at_most


@pytest.mark.gen_test(timeout=30)
async def test_jobs_by_state_every_state_always_present(instance):
    response = await instance.request("POST", "/jobs", {"args": ["true"]})
    done = json.loads(response.body)["id"]
    response = await instance.request("POST", "/jobs", {"args": ["sleep", "60"]})
    sleeper = json.loads(response.body)["id"]

    async def finished():
        response = await instance.request("GET", f"/jobs/{done}")
        return json.loads(response.body)["state"] == "exited"

    await until(finished)
    text = await scrape(instance)
    assert {state: sample(text, "taskrunner_jobs", state=state) for state in
            ("running", "exited", "timed_out", "cancelled", "lost")} == {
        "running": 1, "exited": 1, "timed_out": 0, "cancelled": 0, "lost": 0}
    assert (await instance.request("DELETE", f"/jobs/{sleeper}")).code == 200
    text = await scrape(instance)
    assert sample(text, "taskrunner_jobs", state="running") == 0
    assert sample(text, "taskrunner_jobs", state="cancelled") == 1


PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    (PROMTOOL is None or PROMETHEUS is None) and not os.environ.get("CI"),
    reason="needs Debian's prometheus package (prometheus, promtool): scripts/install")


@needs_prometheus
@pytest.mark.gen_test(timeout=60)
async def test_promtool_accepts_the_metrics_of_a_real_instance(spawn_instance):
    child = spawn_instance()
    assert (await child.request("POST", "/run", {"args": ["true"]})).code == 200
    assert (await child.request("POST", "/run", {"args": ["no-such-program-xyz"]})).code == 422
    assert (await child.request("POST", "/jobs", {"args": ["true"]})).code == 202
    response = await child.request("GET", "/metrics")
    assert response.code == 200
    checked = subprocess.run([PROMTOOL or "promtool", "check", "metrics"], input=response.body,
                             capture_output=True, timeout=30)
    # promtool prints each lint finding (naming, units, counters without _total, ...).
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b"")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query(port, promql):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())["data"]["result"]
    except OSError:  # not listening yet
        return []


@needs_prometheus
def test_a_real_prometheus_keeps_our_labels_as_they_are(spawn_instance):
    # What the dropped labels are for: scraped, nothing comes back as exported_instance.
    child = spawn_instance()
    with tempfile.TemporaryDirectory(prefix="taskrunner-prometheus-") as tmp:
        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global: {scrape_interval: 1s}\nscrape_configs:\n"
                    "  - job_name: taskrunner\n"
                    f"    static_configs: [{{targets: ['127.0.0.1:{child.port}']}}]\n")
        port = free_port()
        prometheus = subprocess.Popen(
            [PROMETHEUS or "prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={tmp}/data", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not (series := query(port, '{__name__=~"taskrunner_.+"}')):
                assert prometheus.poll() is None, "prometheus exited"
                assert time.monotonic() < deadline, "prometheus scraped nothing"
                time.sleep(0.2)
            names = set()
            for one in series:
                labels = one["metric"]
                names.add(labels["__name__"])
                assert not [k for k in labels if k.startswith("exported_")], labels
                assert (labels["instance"], labels["job"]) == (f"127.0.0.1:{child.port}",
                                                               "taskrunner")
            assert {"taskrunner_info", "taskrunner_commands_started_total",
                    "taskrunner_jobs"} <= names
            assert not [name for name in names if name.endswith("_created")]
        finally:
            prometheus.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                prometheus.wait(30)
            if prometheus.poll() is None:
                prometheus.kill()
                prometheus.wait()
