"""OpenTelemetry spans (the ``otel`` extra) received as the real OTLP/HTTP exporter sends
them: a small collector in the test (a Tornado handler decoding the protobuf with
opentelemetry-proto's classes) gets a span per request with children for the queue wait,
the spawn and the run, ids matching the ``traceparent`` header and the command's
``TRACEPARENT``. Without an endpoint, or without the extra, nothing of OpenTelemetry is
imported: a real instance in a ``python -c`` reports the modules it loaded."""

import gzip
import json
import os
import subprocess
import textwrap

import pytest
from helpers import PY, REPO, until
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="the otel extra (in requirements/test.txt) is not installed")

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UNSAMPLED = "5bf92f3577b34da6a3ce929d0e0e4736"
QUEUED = "6bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Collector(RequestHandler):
    """``POST /v1/traces``: decodes an ExportTraceServiceRequest, keeps its spans."""

    def initialize(self, spans):
        self.spans = spans

    def post(self):
        body = self.request.body
        if self.request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = trace_service.ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append({
                        "name": span.name, "trace": span.trace_id.hex(),
                        "id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                        "start": span.start_time_unix_nano / 1e9,
                        "end": span.end_time_unix_nano / 1e9, "status": span.status.code,
                        "kind": span.kind, "resource": resource,
                        "attributes": {kv.key: _value(kv.value) for kv in span.attributes}})
        self.set_header("Content-Type", "application/x-protobuf")
        self.write(trace_service.ExportTraceServiceResponse().SerializeToString())


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind)


@pytest.fixture
def collector(io_loop):
    spans = []
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([(r"/v1/traces", Collector, {"spans": spans})]))
    server.add_sockets(sockets)
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}", spans
    server.stop()


async def post(url, path, body, traceparent):
    client = AsyncHTTPClient(force_instance=True)
    try:
        return await client.fetch(url + path, method="POST", body=json.dumps(body),
                                  headers={"traceparent": traceparent}, raise_error=False)
    finally:
        client.close()


def by_trace(spans, trace):
    return {span["name"]: span for span in spans if span["trace"] == trace}


@pytest.mark.gen_test(timeout=60)
async def test_a_span_per_request_with_queue_spawn_and_run(spawn_instance, collector):
    endpoint, spans = collector
    child = spawn_instance("--max-running", "1", "--instance", "spans", env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"})
    assert "exporting spans over OTLP/HTTP" in child.output()
    unsampled = await post(child.url, "/run", {"args": ["true"]},
                           f"00-{UNSAMPLED}-{PARENT}-00")
    assert unsampled.code == 200
    answer = await post(child.url, "/run",
                        {"args": ["sh", "-c", "echo $TRACEPARENT; exit 3"]},
                        f"00-{TRACE}-{PARENT}-01")
    assert answer.code == 200
    names = {"POST /run", "queue", "spawn", "run"}
    await until(lambda: set(by_trace(spans, TRACE)) == names, 20)
    got = by_trace(spans, TRACE)
    request = got["POST /run"]
    # The request's span: the one its traceparent header names, the caller's as parent.
    assert answer.headers["traceparent"] == f"00-{TRACE}-{request['id']}-01"
    assert request["parent"] == PARENT
    assert request["attributes"]["http.response.status_code"] == 200
    assert request["attributes"]["http.route"] == "/run"
    assert request["resource"]["service.name"] == "taskrunner"
    assert request["resource"]["service.instance.id"] == "spans"
    for name in ("queue", "spawn", "run"):
        assert got[name]["parent"] == request["id"], name
        assert request["start"] <= got[name]["start"] <= got[name]["end"] <= request["end"]
    assert got["queue"]["end"] <= got["spawn"]["start"] <= got["spawn"]["end"] \
        <= got["run"]["start"] + 1e-6
    # The run's span is the one the command ran under.
    command_parent = json.loads(answer.body)["stdout"].strip()
    assert command_parent == f"00-{TRACE}-{got['run']['id']}-01"
    run = got["run"]["attributes"]
    assert (run["process.command"], run["process.exit.code"]) == ("sh", 3)
    assert run["process.command_args"] == ["sh", "-c", "echo $TRACEPARENT; exit 3"]
    assert run["taskrunner.timed_out"] is False
    # A trace its caller did not sample exports nothing (exported before this one).
    assert by_trace(spans, UNSAMPLED) == {}

    # A job queued behind a full --max-running: its queue span is the wait.
    holder = await post(child.url, "/jobs", {"args": ["sleep", "0.6"]},
                        f"00-{'7' * 32}-{PARENT}-01")
    queued = await post(child.url, "/jobs", {"args": ["true"]}, f"00-{QUEUED}-{PARENT}-01")
    assert (holder.code, json.loads(queued.body)["state"]) == (202, "queued")
    await until(lambda: set(by_trace(spans, QUEUED)) == {"POST /jobs", "queue", "spawn",
                                                          "run"}, 20)
    job = by_trace(spans, QUEUED)
    assert job["queue"]["end"] - job["queue"]["start"] >= 0.3
    assert job["POST /jobs"]["end"] <= job["queue"]["end"]  # the 202 went first


PROBE = textwrap.dedent("""
    import asyncio, importlib.abc, json, sys

    class Missing(importlib.abc.MetaPathFinder):  # an environment without the extra
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "opentelemetry":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    if sys.argv[1] == "without-extra":
        sys.meta_path.insert(0, Missing())

    from tornado.httpclient import AsyncHTTPClient
    from taskrunner.config import Config
    from taskrunner.server import Server

    async def main():
        server = Server(Config(port=0, grace=1.0), handle_signals=False)
        await server.startup()
        try:
            answer = await AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{server.port}/run", method="POST",
                body=json.dumps({"args": ["true"]}))
            assert answer.code == 200
        finally:
            await server.shutdown()
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry"))))

    asyncio.run(main())
""")


@pytest.mark.parametrize(("case", "endpoint", "loaded"), [
    ("plain", None, False), ("without-extra", "http://127.0.0.1:9", False),
    ("plain", "http://127.0.0.1:9", True),
], ids=["no-endpoint", "endpoint-without-the-extra", "endpoint-and-extra"])
def test_opentelemetry_is_imported_only_when_asked_and_installed(case, endpoint, loaded):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TASKRUNNER_"))}
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        env["OTEL_EXPORTER_OTLP_TIMEOUT"] = "1"
    done = subprocess.run([PY, "-c", PROBE, case], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout.splitlines()[-1])
    assert bool(modules) is loaded, modules
    if case == "without-extra":
        assert "OpenTelemetry is not installed" in done.stderr
