"""A web page cannot make the stack run a command through its nginx: nginx itself answers
only to the stack's names, and the instances behind it refuse a foreign Origin and a
browser's preflight-free body (the rules of taskrunner/web/edge.py, as a user meets them
through the front). A command that would run writes a marker file, which must never appear.

Ports 18680 and 19485-19488.
"""

import json
import os
import subprocess

import pytest
from browser import attack_run, headless_chromium, page_server
from stackutil import needs_stack, request, running_stack

pytestmark = needs_stack()

PORT, BASE = 18680, 19485


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(str(tmp_path_factory.mktemp("stack-edge")), PORT, BASE) as stack:
        yield stack


@pytest.fixture
def marker(tmp_path):
    path = str(tmp_path / "pwned")
    yield path
    assert not os.path.exists(path), "a command ran"


def refused(response, status, code):
    got, headers, body = response
    assert (got, json.loads(body)["error"]) == (status, code), body
    assert headers["Content-Type"] == "application/json"


def test_the_issues_curl_requests_are_refused_through_nginx(stack, marker):
    run = {"args": ["sh", "-c", f"id > {marker}"]}
    for method, path in (("POST", "/run"), ("POST", "/jobs"), ("GET", "/healthz"),
                         ("GET", "/ui"), ("GET", "/jobs/19485.x")):
        response = request("127.0.0.1", PORT, method, path, run, {
            "Host": "evil.example", "Origin": "http://evil.example",
            "Content-Type": "text/plain"})
        refused(response, 421, "host_not_allowed")
        # nginx itself: the name reaches no instance.
        assert "this front does not answer" in json.loads(response[2])["message"]
    refused(request("127.0.0.1", PORT, "POST", "/run", run, {
        "Origin": "http://evil.example", "Content-Type": "text/plain"}),
        403, "origin_not_allowed")
    refused(request("127.0.0.1", PORT, "POST", "/run", run, {
        "Origin": f"http://127.0.0.1:{PORT}", "Content-Type": "text/plain"}),
        415, "unsupported_media_type")
    # Straight to an instance of the stack, the same.
    refused(request("127.0.0.1", BASE, "POST", "/run", run, {"Host": "evil.example"}),
            421, "host_not_allowed")


def test_the_readmes_curl_still_runs_through_nginx(stack):
    done = subprocess.run(["curl", "-s", f"localhost:{PORT}/run", "-d",
                           '{"args": ["echo", "hi"]}'],
                          capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(done.stdout)["stdout"] == "hi\n"


@pytest.mark.parametrize("page_address", ["127.0.0.2", "127.0.0.1"],
                         ids=["other-address", "other-port"])
def test_a_page_of_another_loopback_origin_cannot_run_a_command_through_nginx(
        stack, page_address, marker):
    with headless_chromium() as driver, page_server(page_address) as page:
        outcomes = attack_run(driver, page, f"http://127.0.0.1:{PORT}",
                              ["sh", "-c", f"id > {marker}"])
    assert outcomes == ["fulfilled", "fulfilled", "fulfilled", "rejected"]


def test_a_rebound_dns_name_gets_neither_the_page_nor_a_command_through_nginx(stack,
                                                                               marker):
    with headless_chromium(["--host-resolver-rules=MAP evil.example 127.0.0.1"]) as driver:
        driver.get(f"http://evil.example:{PORT}/ui")
        assert "host_not_allowed" in driver.page_source
        status = driver.execute_async_script(
            "const [body, done] = arguments; fetch('/run', {method: 'POST', headers: "
            "{'Content-Type': 'application/json'}, body}).then((r) => done(r.status));",
            json.dumps({"args": ["sh", "-c", f"id > {marker}"]}))
    assert status == 421
