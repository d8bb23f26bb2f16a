"""W3C trace context on a real instance: a valid ``traceparent`` (and ``tracestate``) is
carried into the command's environment under a child span, the job, the access log and the
``traceparent`` response header; an absent or malformed one starts a fresh trace; the
parser's edges as the recommendation draws them."""

import json
import re

import pytest
from helpers import access_lines, submit, wait_done

from taskrunner.web.trace import parse_traceparent, parse_tracestate

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SHOW_ENV = ["sh", "-c", 'echo "$TRACEPARENT"; echo "${TRACESTATE-unset}"']
HEADER = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def parts(value):
    match = HEADER.fullmatch(value)
    assert match, value
    return match.groups()


@pytest.mark.gen_test
async def test_the_callers_trace_reaches_the_command_the_answer_and_the_log(instance,
                                                                           log_stream):
    response = await instance.request(
        "POST", "/run", {"args": SHOW_ENV},
        headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "vendor=abc,x=1"})
    assert response.code == 200
    trace, span, flags = parts(response.headers["traceparent"])
    assert (trace, flags) == (TRACE, "01") and span != PARENT  # the request's own span
    command_parent, state = json.loads(response.body)["stdout"].splitlines()
    assert parts(command_parent)[0] == TRACE
    assert parts(command_parent)[1] not in (PARENT, span)  # the run's span, a child
    assert state == "vendor=abc,x=1"
    (line,) = access_lines(log_stream)
    assert line["trace_id"] == TRACE and f"trace={TRACE}" in line["message"]


@pytest.mark.gen_test
@pytest.mark.parametrize("header", [
    None, "garbage", f"00-{TRACE.upper()}-{PARENT}-01", f"00-{'0' * 32}-{PARENT}-01",
    f"00-{TRACE}-{'0' * 16}-01", f"ff-{TRACE}-{PARENT}-01", f"00-{TRACE}-{PARENT}-01-extra",
    f"00-{TRACE}-{PARENT}-1",
], ids=["absent", "garbage", "upper-case", "zero-trace", "zero-parent", "version-ff",
        "00-with-more", "short-flags"])
async def test_an_absent_or_malformed_traceparent_starts_a_fresh_trace(instance, header):
    headers = {"tracestate": "vendor=abc"}
    if header is not None:
        headers["traceparent"] = header
    response = await instance.request("POST", "/run", {"args": SHOW_ENV}, headers=headers)
    assert response.code == 200  # never an error
    trace, _, flags = parts(response.headers["traceparent"])
    assert trace != TRACE and flags == "01"
    command_parent, state = json.loads(response.body)["stdout"].splitlines()
    assert parts(command_parent)[0] == trace
    assert state == "unset"  # a tracestate goes only with a valid traceparent


@pytest.mark.gen_test
async def test_a_job_records_its_trace_and_every_answer_names_one(instance):
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-00"}  # not sampled: passed on as is
    response = await instance.request("POST", "/jobs", {"args": SHOW_ENV}, headers=headers)
    assert response.code == 202
    job = json.loads(response.body)
    assert job["trace_id"] == TRACE
    done = await wait_done(instance, job["id"])
    assert done["trace_id"] == TRACE
    assert parts(done["stdout"].splitlines()[0])[::2] == (TRACE, "00")
    # Errors and requests without one are answered in a trace of their own.
    missing = await instance.request("GET", "/jobs/nope")
    assert missing.code == 404 and parts(missing.headers["traceparent"])[0] != TRACE
    other = await submit(instance, {"args": ["true"]})
    assert re.fullmatch(r"[0-9a-f]{32}", other["trace_id"]) and other["trace_id"] != TRACE


@pytest.mark.gen_test
async def test_the_requests_own_env_wins(instance):
    mine = f"00-{'1' * 32}-{'2' * 16}-01"
    code, body = await instance.run({"args": SHOW_ENV, "env": {"TRACEPARENT": mine}},
                                    headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert code == 200 and body["stdout"].splitlines()[0] == mine


def test_the_parser_follows_the_recommendation():
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-01") == (TRACE, PARENT, "01")
    # A later version: its first four fields are read as version 00's, the rest ignored.
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-09-what-comes") == (TRACE, PARENT, "09")
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-01,00-{TRACE}-{PARENT}-01") is None
    assert parse_traceparent(f" 00-{TRACE}-{PARENT}-01\t") == (TRACE, PARENT, "01")
    assert parse_tracestate(["a=1, b@t=2", "c=3"]) == "a=1,b@t=2,c=3"
    assert parse_tracestate(["a=1,a=2"]) is None  # a key twice
    assert parse_tracestate(["A=1"]) is None  # keys are lower case
    assert parse_tracestate([",".join(f"k{i}=v" for i in range(33))]) is None
    assert parse_tracestate(["", " , "]) is None


@pytest.mark.gen_test
@pytest.mark.parametrize("method", ["TRACE", "PATCH"])
async def test_a_method_no_route_takes_is_answered_in_a_trace(instance, method):
    # TRACE is the name of no handler method of ours: answered 405 like any other.
    response = await instance.request(method, "/run", {"args": ["true"]},
                                      headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert response.code == 405
    assert parts(response.headers["traceparent"])[0] == TRACE


@pytest.mark.gen_test
async def test_an_actions_command_and_job_are_in_the_callers_trace(spawn_instance, tmp_path):
    actions = tmp_path / "actions.toml"
    actions.write_text('[actions.show]\nargs = ["/bin/sh", "-c", '
                       '\'echo "$TRACEPARENT"; echo "${{TRACESTATE-unset}}"\']\n')
    child = spawn_instance("--actions", str(actions))
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "vendor=abc"}
    response = await child.request("POST", "/actions/show", {}, headers=headers)
    assert response.code == 200, response.body
    command_parent, state = json.loads(response.body)["stdout"].splitlines()
    assert parts(command_parent)[0] == TRACE and state == "vendor=abc"
    response = await child.request("POST", "/actions/show/jobs", {}, headers=headers)
    assert response.code == 202, response.body
    done = await wait_done(child, json.loads(response.body)["id"])
    assert done["trace_id"] == TRACE
    assert parts(done["stdout"].splitlines()[0])[0] == TRACE
