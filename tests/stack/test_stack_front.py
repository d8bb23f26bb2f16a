"""The stack's front door, for real through nginx: strangers cannot knock instances out,
and every answer nginx makes itself is JSON in the one error shape.

Ports 18380 and 19185-19188.
"""

import http.client
import json
import re
import socket
import subprocess
import threading
import time

import pytest
from helpers import wait_until
from stackutil import REPO, STACK, Load, needs_stack, running_stack

pytestmark = needs_stack()

PORT, BASE = 18380, 19185
TOKEN = "front-door-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("stack-front"))
    with running_stack(run_dir, PORT, BASE, env={"TASKRUNNER_TOKEN": TOKEN}) as stack:
        yield stack


class Strangers:
    """A thread sending ``POST /run`` with a wrong token and a 20 KiB body, ``rate`` a
    second, each on a new connection, until `stop`; it keeps each answer's status."""

    def __init__(self, port: int, rate: float) -> None:
        self.port = port
        self.interval = 1.0 / rate
        self.statuses: list[int] = []
        self.bodies: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True)

    def __enter__(self) -> "Strangers":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _work(self) -> None:
        body = json.dumps({"args": ["echo", "x" * 20000]}).encode()
        headers = {"Authorization": "Bearer not-the-token", "Content-Type": "application/json"}
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.interval
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("POST", "/run", body=body, headers=headers)
                response = conn.getresponse()
                self.statuses.append(response.status)
                self.bodies.append(response.read())
            except (OSError, http.client.HTTPException):
                self.statuses.append(0)
            finally:
                conn.close()


def test_wrong_tokens_do_not_take_instances_out(stack):
    # Each refused request used to close its upstream connection under nginx (an RST with
    # the body unread); nginx took the instance out for fail_timeout, and the legitimate
    # caller's requests failed with 502.
    with (Load(stack.port, {"args": ["true"]}, workers=4, name="legit", headers=AUTH) as load,
          Strangers(stack.port, rate=40) as strangers):
        # ~4 s of it; longer on a busy machine, where the strangers fall behind their rate.
        assert wait_until(lambda: len(strangers.statuses) >= 160, 30)
    outcomes = load.outcomes
    bad = [o for o in outcomes if o.status != 200]
    print(f"\nwrong tokens: {len(strangers.statuses)} refused, legitimate: {len(outcomes)} "
          f"requests, {len(bad)} not 200")
    assert set(strangers.statuses) == {401}
    assert all(json.loads(b)["error"] == "unauthorized" for b in strangers.bodies)
    assert len(outcomes) >= 50
    assert bad == [], bad[:5]
    error_log = stack.log("nginx-error.log")
    assert "upstream prematurely closed" not in error_log
    assert "Connection reset by peer" not in error_log


def raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as it is (no client library fixes it up) and read one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, dict(response.getheaders()), response.read()


LONG = "a" * 9000  # over nginx's large_client_header_buffers (8k)


@pytest.mark.parametrize("request_bytes,status,code", [
    (b"GET /jobs/../.. HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, "bad_request"),
    (b"GET /jobs/8885.abc%00 HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, "bad_request"),
    (b"GET /run%00 HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, "bad_request"),
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET /run HTTP/1.1\r\n\r\n", 400, "bad_request"),  # no Host
    (f"GET /healthz?{LONG} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(), 414, "uri_too_long"),
    (f"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {LONG}\r\n\r\n".encode(), 431,
     "headers_too_large"),
    (b"TRACE /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 405, "method_not_allowed"),
    (b"GET /healthz HTTP/3.0\r\nHost: localhost\r\n\r\n", 505, "http_version_not_supported"),
    (b"POST /run HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
     "not_implemented"),
    (b"POST /run HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999\r\n\r\n", 413,
     "body_too_large"),
    (b"GET /.taskrunner-error/500 HTTP/1.1\r\nHost: localhost\r\n\r\n", 404, "not_found"),
], ids=["dotdot", "nul-job", "nul", "garbage", "no-host", "long-uri", "big-header", "trace",
        "http3", "gzip-body", "huge-body", "error-page"])
def test_nginx_answers_client_errors_in_json(stack, request_bytes, status, code):
    got, headers, body = raw(stack.port, request_bytes)
    assert got == status, body
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"error": code, "message": json.loads(body)["message"]}
    assert headers["X-Request-Id"]
    if status == 405:
        assert headers["Allow"]


def test_every_error_page_of_nginx_is_json_with_its_status():
    # What a test cannot easily provoke through a live stack (500, 503, 504...) is checked
    # where it is written: each error_page leads to a page that answers the status the
    # client is meant to see, with a JSON body in the one error shape.
    with open(f"{REPO}/taskrunner/deploy/templates/nginx-http.conf.template") as f:
        text = f.read()
    pages = dict(re.findall(r"location = (/\.taskrunner-error/\d+) \{(.*?)\}\n", text, re.S))
    routed = re.findall(r"error_page (\d+) (?:=(\d+) )?(\S+);", text)
    assert {"400", "413", "414", "494", "500", "502", "503", "504"} <= {c for c, _, _ in routed}
    for code, shown, uri in routed:
        page = pages[uri]
        returned = re.search(r"return (\d+) '(.*)';", page)
        assert returned, uri
        assert returned.group(1) == (shown or code), uri
        body = json.loads(returned.group(2).replace("\\n", "\n").replace("@MAX_BODY@", "1"))
        assert set(body) == {"error", "message"}, uri
        assert "internal;" in page, uri


def test_no_instance_answering_is_a_json_502(stack):
    stack.ctl("stop", "taskrunner:*")
    try:
        status, headers, body = stack.call("GET", "/healthz")
        assert status == 502
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body)["error"] == "bad_gateway"
    finally:
        stack.ctl("start", "taskrunner:*")


def test_healthz_through_nginx_tells_strangers_the_status_only(stack):
    # The instances may be coming back from the test before: wait for all four, and for
    # nginx to send requests to them again (it leaves a failed one alone for 2 s).
    assert wait_until(lambda: all(stack.health(port) for port in stack.ports), 15)
    assert wait_until(lambda: all(stack.call("GET", "/healthz")[0] == 200
                                  for _ in range(8)), 15)
    status, _, body = stack.call("GET", "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, _, body = stack.call("GET", "/healthz", headers=AUTH)
    whole = json.loads(body)
    assert status == 200 and whole["port"] in stack.ports and whole["pid"] > 0, whole
    # scripts/stack status sends TASKRUNNER_TOKEN: each instance's whole answer, or,
    # without the token, its status only.
    done = stack.script("status")
    assert done.returncode == 0, done.stdout + done.stderr
    for port in stack.ports:
        assert re.search(rf'^instance {port}: {{.*"pid":\s*\d+', done.stdout, re.M), done.stdout
    done = subprocess.run([STACK, "status"], env={**stack.env, "TASKRUNNER_TOKEN": ""},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for port in stack.ports:
        assert f'instance {port}: {{"status":"ok"}}' in done.stdout, done.stdout
