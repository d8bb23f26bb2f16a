"""The client's one implementation through its own API (taskrunner/client/protocol.py):
the requests an operation sends, how answers map to values and errors, and which refusals
are retried after the wait the service asks for. Answers are the service's documented
shapes (docs/api.md); the same code runs against real instances in the other tests."""

from __future__ import annotations

import json

import pytest

from taskrunner.client import protocol
from taskrunner.client.errors import (
    BadRequest,
    ProtocolError,
    TooManyRequests,
    Unavailable,
)

RESULT = {"status": 0, "stdout": "hi\n", "stderr": "", "timed_out": False, "duration": 0.01,
          "stdout_truncated": False, "stderr_truncated": False}


def answer(status, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return protocol.Response(status, headers or {}, data)


def busy(retry_after="1"):
    return answer(429, {"error": "too_many_requests", "message": "busy"},
                  {"retry-after": retry_after} if retry_after else {})


def drive(operation, answers):
    """Run ``operation`` against ``answers`` in turn; the steps it took, and its value."""
    steps, reply, answers = [], None, iter(answers)
    try:
        while True:
            step = operation.send(reply)
            steps.append(step)
            reply = None if isinstance(step, protocol.Sleep) else next(answers)
    except StopIteration as done:
        return steps, done.value


def test_run_sends_only_the_fields_given_and_waits_as_long_as_the_command():
    body = protocol.command_body(["echo", "hi"], None, {"A": "1"}, None, "in")
    steps, result = drive(protocol.run(body, retries=0), [answer(200, RESULT)])
    (request,) = steps
    assert (request.method, request.path, request.read_timeout) == ("POST", "/run", None)
    assert request.body == {"args": ["echo", "hi"], "env": {"A": "1"}, "stdin": "in"}
    assert (result.status, result.stdout, result.exit_code) == (0, "hi\n", 0)


def test_a_refusal_with_retry_after_is_retried_after_that_wait_then_given_up():
    body = protocol.command_body(["true"], None, None, None, None)
    steps, result = drive(protocol.run(body, retries=2), [busy("1"), busy("2"),
                                                          answer(200, RESULT)])
    assert [type(s).__name__ for s in steps] == ["Request", "Sleep", "Request", "Sleep",
                                                  "Request"]
    assert [s.seconds for s in steps if isinstance(s, protocol.Sleep)] == [1.0, 2.0]
    assert result.status == 0
    with pytest.raises(TooManyRequests) as refused:
        drive(protocol.run(body, retries=1), [busy(), busy()])
    assert (refused.value.code, refused.value.retry_after) == ("too_many_requests", 1.0)


def test_only_refusals_that_ask_for_a_retry_are_retried():
    body = protocol.command_body(["true"], None, None, None, None)
    with pytest.raises(Unavailable):  # 503 shutting_down carries no Retry-After
        drive(protocol.submit(body, retries=5),
              [answer(503, {"error": "shutting_down", "message": "bye"})])
    with pytest.raises(BadRequest):
        drive(protocol.submit(body, retries=5),
              [answer(400, {"error": "invalid_field", "message": "no"})])
    steps, _ = drive(protocol.call(protocol.Request("GET", "/jobs"), retries=1),
                     [busy("600"), answer(200, {"jobs": []})])
    assert steps[1].seconds == protocol.MAX_RETRY_WAIT  # a wait is capped


def test_an_answer_that_is_not_taskrunners_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="text/html"):
        drive(protocol.list_jobs(), [answer(404, b"<html>nope</html>",
                                            {"content-type": "text/html"})])
    with pytest.raises(ProtocolError):
        drive(protocol.list_jobs(), [answer(200, {"not": "jobs"})])


def test_job_ids_are_quoted_into_one_path_segment():
    (request,), _ = drive(protocol.get_job("a/../b?c"), [answer(200, {"id": "x",
                                                                    "state": "running"})])
    assert request.path == "/jobs/a%2F..%2Fb%3Fc"


def test_a_stream_cut_before_the_final_job_is_a_protocol_error():
    decoder = protocol.OutputDecoder("application/x-ndjson")
    assert decoder.feed(b'{"stream": "stdout", "data": "a"}\n{"stream"') == [
        protocol.Chunk("stdout", "a")]
    with pytest.raises(ProtocolError, match="ended before the job"):
        decoder.close()
