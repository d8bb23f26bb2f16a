"""A web page cannot make an instance run a command: the Host, Origin and Content-Type rules
(taskrunner/web/edge.py), with curl-like requests and with a real page in Debian's Chromium.

Every instance here is a real child process without a token (the loopback default); a
command that would run writes a marker file, which must never appear.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from browser import attack_run, headless_chromium, page_server
from conftest import ChildInstance
from helpers import wait_until
from selenium.webdriver.remote.webdriver import WebDriver
from stackutil import request

TOKEN = "edge-test-token-0123456789"

def marker_args(marker: str) -> list[str]:
    return ["sh", "-c", f"id > {marker}"]

def refused(response: tuple[int, dict[str, str], bytes], status: int, code: str) -> None:
    got, headers, body = response
    assert (got, json.loads(body)["error"]) == (status, code), body
    assert headers["Content-Type"] == "application/json"

@pytest.fixture(scope="module")
def plain() -> Iterator[ChildInstance]:
    """One instance as it comes: loopback, no token."""
    child = ChildInstance(["--port", "0"])
    yield child
    child.stop()

@pytest.fixture(scope="module")
def guarded() -> Iterator[ChildInstance]:
    child = ChildInstance(["--port", "0"], env={"TASKRUNNER_TOKEN": TOKEN})
    yield child
    child.stop()

@pytest.fixture
def marker(tmp_path: Any) -> Iterator[str]:
    path = str(tmp_path / "pwned")
    yield path
    assert not os.path.exists(path), "a command ran"

def test_the_issues_curl_requests_are_refused_each_with_its_own_error(plain, marker):
    port = plain.port
    body = {"args": marker_args(marker)}
    # A rebound DNS name: whatever else the request says.
    refused(request("127.0.0.1", port, "POST", "/run", body, {
        "Host": "evil.example", "Origin": "http://evil.example",
        "Content-Type": "text/plain"}), 421, "host_not_allowed")
    refused(request("127.0.0.1", port, "POST", "/run", body, {
        "Origin": "http://evil.example", "Content-Type": "text/plain"}),
        403, "origin_not_allowed")
    refused(request("127.0.0.1", port, "POST", "/run", body, {
        "Origin": f"http://127.0.0.1:{port}", "Content-Type": "text/plain"}),
        415, "unsupported_media_type")

@pytest.mark.parametrize("method,path", [
    ("GET", "/healthz"), ("GET", "/livez"), ("GET", "/readyz"), ("GET", "/ui"),
    ("GET", "/ui/app.js"), ("GET", "/jobs"), ("GET", "/metrics"), ("GET", "/openapi.json"),
    ("GET", "/jobs/x.y"), ("GET", "/jobs/x.y/output"), ("DELETE", "/jobs/x.y"),
    ("POST", "/jobs"), ("POST", "/run"), ("GET", "/no/such/route"), ("PUT", "/run"),
    ("OPTIONS", "/run")])
def test_a_foreign_host_is_refused_on_every_route_before_the_token(guarded, method, path,
                                                                    marker):
    port = guarded.port
    body = {"args": marker_args(marker)} if method in ("POST", "PUT") else None
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example",
                 "[::2]", "10.0.0.1"):
        refused(request("127.0.0.1", port, method, path, body,
                        {"Host": host, "Authorization": f"Bearer {TOKEN}"}),
                421, "host_not_allowed")
    # The name is compared, not the port, nor the case; the token is still asked after.
    for host in ("localhost", "LOCALHOST.", f"127.0.0.1:{port + 1}", "[::1]:1"):
        status, _, _ = request("127.0.0.1", port, "GET", "/jobs", None, {"Host": host})
        assert status == 401, host

@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.2:8000",
                                    "https://localhost.evil.example", "file://", "garbage"])
@pytest.mark.parametrize("method,path", [("POST", "/run"), ("POST", "/jobs"),
                                         ("DELETE", "/jobs/x.y"), ("PATCH", "/run")])
def test_a_foreign_origin_may_change_nothing(plain, origin, method, path, marker):
    port = plain.port
    refused(request("127.0.0.1", port, method, path, {"args": marker_args(marker)},
                    {"Origin": origin, "Content-Type": "application/json"}),
            403, "origin_not_allowed")

def test_a_foreign_origin_may_read_nothing_it_could_not_read_anyway(plain):
    # GET is not state-changing: a cross-origin read is the browser's to forbid (no CORS
    # header is ever sent), and a page's <img src> or <script src> still gets its answer.
    port = plain.port
    status, headers, _ = request("127.0.0.1", port, "GET", "/healthz", None,
                                 {"Origin": "http://evil.example"})
    assert status == 200
    assert not any(h.lower().startswith("access-control-") for h in headers)

@pytest.mark.parametrize("content_type", [
    "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", " TEXT/Plain ", None])
@pytest.mark.parametrize("browser_header", [
    {"Sec-Fetch-Mode": "no-cors"}, {"Sec-Fetch-Site": "cross-site"},
    {"Origin": "http://localhost:1"}])
def test_a_browsers_body_without_a_preflight_is_refused(plain, content_type, browser_header,
                                                        marker):
    port = plain.port
    headers = {**browser_header, **({"Content-Type": content_type} if content_type else {})}
    refused(request("127.0.0.1", port, "POST", "/run", {"args": marker_args(marker)},
                    headers), 415, "unsupported_media_type")

def test_the_readmes_curl_and_a_same_origin_page_still_run(plain):
    port = plain.port
    done = subprocess.run(["curl", "-s", f"localhost:{port}/run", "-d",
                           '{"args": ["sh", "-c", "echo out; echo err >&2; exit 3"]}'],
                          capture_output=True, text=True, timeout=30, check=True)
    answer = json.loads(done.stdout)
    assert (answer["status"], answer["stdout"], answer["stderr"]) == (3, "out\n", "err\n")
    # What /ui sends: same origin, JSON, Sec-Fetch-* headers.
    for host in ("127.0.0.1", "localhost"):
        status, _, body = request("127.0.0.1", port, "POST", "/run", {"args": ["echo", "ok"]}, {
            "Host": f"{host}:{port}", "Origin": f"http://{host}:{port}",
            "Content-Type": "application/json", "Sec-Fetch-Site": "same-origin",
            "Sec-Fetch-Mode": "cors"})
        assert (status, json.loads(body)["stdout"]) == (200, "ok\n")

def test_no_cors_preflight_is_granted(plain):
    port = plain.port
    status, headers, body = request("127.0.0.1", port, "OPTIONS", "/run", None, {
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 405, body
    assert not any(h.lower().startswith("access-control-") for h in headers)

def test_the_flags_widen_each_rule_and_nothing_else(spawn_instance):
    port = spawn_instance("--allowed-host", "tasks.example", "--allowed-origin",
                          "https://portal.example:8443").port
    run = {"args": ["echo", "ok"]}
    status, _, _ = request("127.0.0.1", port, "POST", "/run", run, {
        "Host": "Tasks.Example:443", "Origin": "https://tasks.example",
        "Content-Type": "application/json"})
    assert status == 200
    status, _, _ = request("127.0.0.1", port, "POST", "/run", run, {
        "Origin": "https://portal.example:8443", "Content-Type": "application/json"})
    assert status == 200
    refused(request("127.0.0.1", port, "POST", "/run", run, {
        "Origin": "https://portal.example", "Content-Type": "application/json"}),
        403, "origin_not_allowed")  # an origin is scheme, host and port
    refused(request("127.0.0.1", port, "POST", "/run", run, {"Host": "other.example"}),
            421, "host_not_allowed")
    anything = spawn_instance("--allowed-host", "*").port
    status, _, _ = request("127.0.0.1", anything, "GET", "/healthz", None,
                           {"Host": "evil.example"})
    assert status == 200

def test_the_advertise_urls_host_is_answered_to_as_siblings_send_it(spawn_instance):
    port = spawn_instance("--advertise-url", "http://Tasks-1.Internal:9999").port
    status, _, _ = request("127.0.0.1", port, "GET", "/healthz", None,
                           {"Host": "tasks-1.internal:9999"})
    assert status == 200
    refused(request("127.0.0.1", port, "GET", "/healthz", None, {"Host": "tasks-2.internal"}),
            421, "host_not_allowed")

def test_a_wildcard_bind_answers_to_the_machines_own_addresses(spawn_instance):
    # What a container platform's probe sends: Host is the pod's address and port.
    port = spawn_instance("--address", "0.0.0.0", "--insecure-http",
                          env={"TASKRUNNER_TOKEN": TOKEN}).port
    for host in (f"127.0.0.1:{port}", f"127.0.0.3:{port}", socket.gethostname(), "localhost"):
        status, _, _ = request("127.0.0.1", port, "GET", "/healthz", None, {"Host": host})
        assert status == 200, host
    for host in ("192.0.2.1", "evil.example", f"{socket.gethostname()}.evil.example"):
        refused(request("127.0.0.1", port, "GET", "/healthz", None, {"Host": host}),
                421, "host_not_allowed")

@pytest.mark.parametrize("flag,value,message", [
    ("--allowed-host", "evil.example:80", "is not a host name or an address"),
    ("--allowed-origin", "http://x.example/", "is not scheme://host[:port]"),
    ("--allowed-origin", "*", "is not scheme://host[:port]"),
    ("--advertise-url", "http://tasks.internal:80/path", "is not http(s)://HOST[:PORT]"),
    ("--advertise-url", "http://0.0.0.0:8885", "names a wildcard address"),
    ("--advertise-url", "tasks.internal:8885", "is not http(s)://HOST[:PORT]")])
def test_a_wrong_flag_stops_the_instance_with_one_line(flag, value, message):
    from helpers import PY, REPO
    done = subprocess.run([PY, "-m", "taskrunner", "--port", "0", flag, value], cwd=REPO,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr

@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    # evil.example resolves to this machine, as a rebound DNS name would.
    with headless_chromium(["--host-resolver-rules=MAP evil.example 127.0.0.1"]) as driver:
        yield driver

@pytest.mark.parametrize("page_address", ["127.0.0.2", "127.0.0.1"],
                         ids=["other-address", "other-port"])
def test_a_page_of_another_loopback_origin_cannot_run_a_command(chromium, spawn_instance,
                                                                page_address, marker):
    instance = spawn_instance()
    with page_server(page_address) as page:
        outcomes = attack_run(chromium, page, f"http://127.0.0.1:{instance.port}",
                              marker_args(marker))
    assert outcomes == ["fulfilled", "fulfilled", "fulfilled", "rejected"]
    # The requests did arrive, and were refused (the access log has them).
    expected = "403" if page_address != "127.0.0.1" else "415"
    assert wait_until(lambda: instance.output().count(f"POST /run {expected} ") == 3, 5), \
        instance.output()

def test_a_rebound_dns_name_gets_neither_the_page_nor_a_command(chromium, spawn_instance,
                                                                marker):
    instance = spawn_instance()
    origin = f"http://evil.example:{instance.port}"
    chromium.get(f"{origin}/ui")  # the attacker's page, now served by the instance?
    assert "host_not_allowed" in chromium.page_source
    # Same origin as far as the browser knows: JSON, and the answer readable.
    status = chromium.execute_async_script(
        "const [body, done] = arguments; fetch('/run', {method: 'POST', headers: "
        "{'Content-Type': 'application/json'}, body}).then((r) => done(r.status));",
        json.dumps({"args": marker_args(marker)}))
    assert status == 421


def test_a_refused_body_is_read_so_the_connection_stays_usable(plain):
    # Behind nginx, a connection closed under a request counts as the instance failing
    # (max_fails): a page's refused requests must not take an instance out.
    conn = http.client.HTTPConnection("127.0.0.1", plain.port, timeout=30)
    try:
        body = json.dumps({"args": ["echo", "x"], "stdin": "y" * 50_000}).encode()  # < 64 KiB
        for headers, status in (({"Host": "evil.example"}, 421), ({"Origin": "null"}, 403),
                                ({"Sec-Fetch-Mode": "no-cors"}, 415), ({}, 200)):
            conn.request("POST", "/run", body=body, headers=headers)
            response = conn.getresponse()
            assert (response.status, response.getheader("Connection")) == (status, None)
            response.read()
        sock = conn.sock
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        assert conn.sock is sock  # one connection all along
    finally:
        conn.close()
