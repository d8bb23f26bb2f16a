"""``trun`` names the true cause of each failure, against real instances: an https
certificate it does not trust (and how to trust it: ``--ca-file``, ``SSL_CERT_FILE``), the
service's own message for a caller's full share, a token wanted and none given (apart from
one refused), a command's timeout; ``--url``/``--token`` after the command's name; ``trun
ps`` with each job's caller and local times that say their zone."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime

import pytest
from cliutil import TRUN, Terminal, trun, trun_env
from conftest import Certificate
from helpers import token_sha256, wait_for

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"}


def callers_toml():
    entries = "".join(
        f'[callers.{name}]\ntoken_sha256 = "{token_sha256(token)}"\n'
        'scopes = ["run", "jobs", "admin"]\nallow = "instance"\nmax_running = 1\n'
        'limits = "instance"\n\n' for name, token in TOKENS.items())
    return 'realm = "test"\n\n' + entries


@pytest.fixture
def callers(spawn_instance, tmp_path):
    path = tmp_path / "callers.toml"
    path.write_text(callers_toml())
    return spawn_instance("--callers", str(path))


def one_line(done, status=125):
    text = done.stderr.decode()
    assert done.returncode == status, text
    assert text.startswith("trun: ") and text.count("\n") == 1, text
    assert "Traceback" not in text
    return text


# -- 1: an untrusted certificate --------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("certs"))
    return Certificate(directory, "server"), Certificate(directory, "other")


def test_an_untrusted_certificate_says_so_and_how_to_trust_it(spawn_instance, certs):
    server, other = certs
    child = spawn_instance("--certfile", server.cert, "--keyfile", server.key)
    url = f"https://localhost:{child.port}"
    text = one_line(trun(url, "health"))
    # Not the SSL error's number read as an OS error ("Operation not permitted").
    assert "Operation not permitted" not in text
    assert "certificate is not trusted (self-signed certificate)" in text, text
    assert "--ca-file FILE or SSL_CERT_FILE=FILE" in text, text
    # Both remedies it names work.
    trusted = trun(url, "health", "--ca-file", server.cert)
    assert (trusted.returncode, trusted.stdout[:9]) == (0, b"status ok"), trusted.stderr
    by_env = subprocess.run([*TRUN, "health"], env={**trun_env(url), "SSL_CERT_FILE": server.cert},
                            capture_output=True, timeout=60, check=False)
    assert (by_env.returncode, by_env.stdout[:9]) == (0, b"status ok"), by_env.stderr
    # A CA file that is not the instance's is named as the one that did not trust it.
    wrong = one_line(trun(url, "health", "--ca-file", other.cert))
    assert f"not by --ca-file {other.cert}" in wrong, wrong
    missing = one_line(trun(url, "health", "--ca-file", "/nonexistent.pem"), status=2)
    assert "--ca-file /nonexistent.pem: No such file or directory" in missing, missing


# -- 2: the service's own message for a refusal -------------------------------------------

def test_a_callers_full_share_shows_the_services_message(callers, tmp_path):
    alice = TOKENS["alice"]
    holder = trun(callers.url, "run", "-d", "--", "sh", "-c", wait_for(tmp_path / "gate"),
                  token=alice)
    assert holder.returncode == 0, holder.stderr
    text = one_line(trun(callers.url, "run", "--", "true", token=alice))
    assert "caller 'alice' has 1 commands running or waiting, its share of this instance " \
           "(max_running 1)" in text, text
    assert "(429 too_many_requests); it asks to retry after 1 s" in text, text
    assert "busy" not in text  # the instance is not: bob still runs
    assert trun(callers.url, "run", "--", "true", token=TOKENS["bob"]).returncode == 0


# -- 3 and 4: --url and --token after the command's name; a token wanted or refused -----

def test_url_and_token_are_taken_after_the_command_too(spawn_instance):
    token = "right-token-0123456789"
    child = spawn_instance(env={"TASKRUNNER_TOKEN": token})
    nowhere = "http://127.0.0.1:9"  # TASKRUNNER_URL: the flags must win over it
    ran = trun(nowhere, "run", "--url", child.url, "--token", token, "--", "echo", "hi")
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, b"hi\n", b"")
    listed = trun(nowhere, "ps", "--json", "--url", child.url, "--token", token)
    assert listed.returncode == 0, listed.stderr
    assert [job["args"] for job in json.loads(listed.stdout)["jobs"]] == [["echo", "hi"]]
    before = trun(nowhere, "--url", child.url, "--token", token, "health")
    assert before.returncode == 0 and before.stdout.split()[:2] == [b"status", b"ok"]
    # After "--", they are the command's own arguments.
    echoed = trun(child.url, "run", "--token", token, "--", "echo", "--url", "x")
    assert echoed.stdout == b"--url x\n", echoed.stderr

    wanted = one_line(trun(child.url, "ps"))
    assert "wants a token (401 unauthorized) and none was given" in wanted, wanted
    assert "refused" not in wanted
    refused = one_line(trun(child.url, "ps", "--token", "wrong-token-0123456789"))
    assert "refused the token (401 unauthorized)" in refused, refused


def test_a_timeout_says_so_on_stderr(spawn_instance):
    child = spawn_instance()
    done = trun(child.url, "run", "--timeout", "0.5", "--", "sleep", "30")
    assert done.returncode == 124
    assert re.fullmatch(rb"trun: job \S+ timed out after 0\.5 s: killed\n", done.stderr), \
        done.stderr
    job_id = done.stderr.split()[2].decode()
    waited = trun(child.url, "wait", job_id)
    assert (waited.returncode, waited.stderr) == (124, done.stderr)


def test_a_timeout_on_a_terminal_is_its_own_line_after_the_status_line(spawn_instance):
    child = spawn_instance()
    term = Terminal(child.url, "run", "--timeout", "1.5", "--", "sh", "-c",
                    "echo started; sleep 30")
    try:
        term.read_until(b"(Ctrl-C cancels)")  # the status line is drawn
        assert term.wait() == 124
    finally:
        term.close()
    # Erased first, so the message starts its own line; nothing follows it.
    assert re.search(rb"\r\x1b\[Ktrun: job \S+ timed out after 1\.5 s: killed\r\n$", term.screen), \
        term.screen[-200:]


# -- 5: trun ps: the caller, local times with their zone ----------------------------------

def test_ps_shows_the_caller_and_local_times_with_their_zone(callers):
    for token in TOKENS.values():
        assert trun(callers.url, "run", "--", "true", token=token).returncode == 0
    env = {**trun_env(callers.url, TOKENS["alice"]), "TZ": "Asia/Tokyo"}
    table = subprocess.run([*TRUN, "ps"], env=env, capture_output=True, timeout=60,
                           check=False)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.decode().splitlines()
    assert header.split() == ["ID", "STATE", "EXIT", "CALLER", "CREATED", "DURATION",
                              "COMMAND"]
    listed = json.loads(trun(callers.url, "ps", "--json", token=TOKENS["alice"]).stdout)["jobs"]
    assert len(rows) == len(listed) == 2
    for row, job in zip(rows, listed, strict=True):
        cells = row.split()
        assert cells[:4] == [job["id"], "exited", "0", job["caller"]]
        utc = datetime.fromisoformat(job["created"].replace("Z", "+00:00"))
        tokyo = utc.timestamp() + 9 * 3600  # Tokyo keeps no summer time
        assert " ".join(cells[4:7]) == \
            datetime.fromtimestamp(int(tokyo), UTC).strftime("%Y-%m-%d %H:%M:%S") + " JST"
    assert {row.split()[3] for row in rows} == {"alice", "bob"}


def test_ps_says_utc_when_the_machine_keeps_utc(spawn_instance):
    child = spawn_instance()
    assert trun(child.url, "run", "--", "true").returncode == 0
    env = {**trun_env(child.url), "TZ": "UTC"}
    table = subprocess.run([*TRUN, "ps"], env=env, capture_output=True, timeout=60,
                           check=False)
    (row,) = table.stdout.decode().splitlines()[1:]
    cells = row.split()
    assert cells[3] == "anonymous" and cells[6] == "UTC", row
