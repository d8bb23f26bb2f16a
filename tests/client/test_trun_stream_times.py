"""Clients that know only ``stream`` and ``data`` read an output stream whose live chunks
carry their time (``t``, tests/web/test_stream_times.py) as before: ``trun logs -f``, a real
child, prints exactly the command's output, stdout and stderr apart.
"""

import http.client
import json
import subprocess

from cliutil import TRUN, trun_env
from helpers import wait_for


def test_trun_follows_a_stream_with_times_as_before(spawn_instance, tmp_path):
    child = spawn_instance()
    gate = tmp_path / "gate"
    status, _, body = http_post(child.port, {"args": [
        "sh", "-c", f"echo one; {wait_for(gate)}; echo two >&2; echo three"]})
    assert status == 202, body
    job_id = json.loads(body)["id"]
    with subprocess.Popen([*TRUN, "logs", "-f", job_id], env=trun_env(child.url),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as following:
        try:
            # trun has printed "one": it is attached, and what follows comes live, timed.
            assert following.stdout.readline() == b"one\n"
            gate.touch()
            out, err = following.communicate(timeout=30)
        finally:
            following.kill()
    assert following.returncode == 0, err
    assert out == b"three\n"
    assert err.endswith(b"two\n"), err
    assert b'"t"' not in out + err


def http_post(port, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/jobs", json.dumps(body),
                     {"Content-Type": "application/json", "Host": "localhost"})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()
