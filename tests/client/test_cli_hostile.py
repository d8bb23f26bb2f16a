"""``trun`` against a hostile server: job ids, states, args, ``/healthz`` fields, error
codes and messages full of escape sequences reach the terminal escaped (``\\x1b``,
``\\u202e``), on pipes and on a real terminal (the status line of ``trun run``); only the
command's own stdout and stderr pass through as they are, and nothing the server sends
makes a traceback. The server is a real HTTP server
on 127.0.0.1 (http.server) answering trun's requests; the last test does the same with a
real instance and a job whose args hold escapes."""

from __future__ import annotations

import json
import re
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import pytest
from cliutil import Terminal, trun
from helpers import serving

from taskrunner.client import Client

#: Clears the screen, retitles the window, sets a colour through a C1 CSI, reverses the
#: line (bidi override), deletes, breaks the line, and a lone surrogate no encoding writes.
EVIL = "x\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil\u2066\x7f\x00\r\n\t\x08\ud800y"
#: What the command itself wrote: passed through untouched.
PASSTHROUGH = "raw \x1b[1mbold\x1b[0m output\n"
#: A control character as a terminal would meet it in trun's output (UTF-8 decoded).
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def evil_job(state="exited", **fields):
    return {"id": "job-" + EVIL, "state": state, "args": [EVIL, "--flag=" + EVIL],
            "status": 0, "created": EVIL, "instance": EVIL, "duration": 1.0,
            "stdout": PASSTHROUGH, "stderr": PASSTHROUGH, **fields}


FAILED = evil_job("failed", status=None, error={"error": EVIL, "message": EVIL})


class Hostile(BaseHTTPRequestHandler):
    """Answers every request trun makes with fields full of escapes."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/healthz":
            self.answer(200, {"status": EVIL, "instance": EVIL, "running": EVIL,
                              "version": EVIL})
        elif path == "/jobs":
            self.answer(200, {"jobs": [evil_job(), FAILED], "next": None})
        elif path.startswith("/jobs/deny"):
            self.answer(403, {"error": EVIL, "message": EVIL})
        elif path.startswith("/jobs/token"):
            self.answer(401, {"error": EVIL, "message": EVIL})
        elif path.startswith("/jobs/html"):
            # A content type with a C1 byte (latin-1 0x9b, a CSI): obs-text HTTP allows.
            self.send_response(500)
            self.send_header("Content-Type", "text/\x9b2Jhtml")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"<>")
        elif path.endswith("/output"):
            self.stream()
        else:
            self.answer(200, FAILED)

    def do_DELETE(self):
        self.answer(200, evil_job("cancelled"))

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["args"][0] == "busy":
            self.answer(429, {"error": EVIL, "message": EVIL}, {"Retry-After": "0"})
        else:
            self.answer(202, evil_job("running", status=None))

    def answer(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def stream(self):
        # HTTP/1.0: the body ends when the connection does. A second and a half between
        # the output and the end, so trun run draws its status line on a terminal.
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        self.wfile.write(json.dumps({"stream": "stdout", "data": PASSTHROUGH}).encode() + b"\n")
        # What no instance sends: a lone surrogate, which no encoding writes as it is.
        self.wfile.write(json.dumps({"stream": "stderr", "data": "\ud800\n"}).encode() + b"\n")
        time.sleep(1.6)
        self.wfile.write(json.dumps(FAILED).encode() + b"\n")


@pytest.fixture
def hostile():
    with serving(Hostile) as url:
        yield url


def assert_clean(data, *allowed):
    """No control character in ``data`` once each of ``allowed`` (what the command wrote,
    trun's own status-line sequences) and the line ends are taken out; no traceback."""
    text = data.decode("utf-8", "surrogateescape")
    for part in allowed:
        text = text.replace(part, "")
    text = text.replace("\r\n", "").replace("\n", "")
    assert not CONTROL.findall(text), text
    assert "\\udc" not in ascii(text)  # not UTF-8: a surrogate written raw
    assert "Traceback" not in text


def test_ps_shows_every_field_escaped(hostile):
    done = trun(hostile, "ps")
    assert done.returncode == 0, done.stderr
    assert_clean(done.stdout)
    assert b"\\x1b]0;pwned\\x07" in done.stdout  # the fields are shown, escaped
    assert b"\\u202eevil" in done.stdout
    assert done.stdout.count(b"\n") == 3  # the header and one line per job


def test_ps_json_is_escaped_by_json_itself(hostile):
    done = trun(hostile, "ps", "--json")
    assert done.returncode == 0, done.stderr
    assert_clean(done.stdout.replace(b"\n", b""))
    assert json.loads(done.stdout)["jobs"][0]["args"][0] == EVIL


def test_health_fields_are_escaped(hostile):
    done = trun(hostile, "health")
    assert done.returncode == 1  # not "ok"
    assert_clean(done.stdout)
    assert done.stdout.startswith(b"status x\\x1b]0;pwned")


@pytest.mark.parametrize("args", [
    ["wait", "deny"],                          # a 403: its code and message
    ["cancel", "token"],                       # a 401
    ["logs", "html"],                          # not JSON: its content type is shown
    ["wait", "failed"],                        # a failed job: its error message and id
    ["run", "--retry", "1", "--", "busy"],     # the retry notice, then the 429
    ["run", "--detach", "--", "true"],         # the new job's id
    ["cancel", "job"],                         # the cancelled job's id and state
], ids=["403", "401", "not-json", "failed", "429", "detach", "cancel"])
def test_errors_and_answers_are_escaped(hostile, args):
    done = trun(hostile, *args)
    assert done.returncode in (0, 125, 126), done.stderr
    assert_clean(done.stdout)
    assert_clean(done.stderr)
    assert b"\\x1b" in done.stdout + done.stderr or b"\\x9b" in done.stderr, done


def test_logs_pass_the_commands_output_through(hostile):
    done = trun(hostile, "logs", "some-job")
    assert (done.returncode, done.stdout, done.stderr) == (
        0, PASSTHROUGH.encode(), PASSTHROUGH.encode())
    done = trun(hostile, "logs", "-f", "some-job")
    assert (done.returncode, done.stdout, done.stderr) == (0, PASSTHROUGH.encode(), b"?\n")


def test_run_on_a_terminal_escapes_the_status_line_and_the_end(hostile):
    term = Terminal(hostile, "run", "--", "anything")
    try:
        screen = term.read_until(b" s (Ctrl-C cancels)")
        assert term.wait() == 126  # the job "failed"
    finally:
        term.close()
    screen = term.screen
    assert b"\x1b[2mtrun: job-x\\x1b]0;pwned\\x07" in screen  # the status line, escaped
    assert b"trun: job job-x\\x1b]0;pwned" in screen  # how it ended, escaped
    own = ["\r\x1b[K", "\x1b[2m", "\x1b[0m"]  # trun's status line itself
    assert_clean(screen, PASSTHROUGH.replace("\n", "\r\n"), "?\r\n", *own)


def test_ps_of_a_real_instance_escapes_a_jobs_args(spawn_instance):
    child = spawn_instance()
    with Client(child.url) as client:
        client.submit(["echo", "\x1b]0;pwned\x07\x1b[2J", "\u202eevil"]).wait()
    done = trun(child.url, "ps")
    assert done.returncode == 0, done.stderr
    assert_clean(done.stdout)
    assert b"echo '\\x1b]0;pwned\\x07\\x1b[2J' '\\u202eevil'" in done.stdout
