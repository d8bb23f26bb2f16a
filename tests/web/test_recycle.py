import http.client
import json
import os
import signal
import time

from helpers import wait_until

from taskrunner.web import recycle
from taskrunner.web.recycle import RecycleLock


def post_run(conn):
    conn.request("POST", "/run", body=json.dumps({"args": ["true"]}))
    response = conn.getresponse()
    response.read()
    return response


def test_after_max_requests_it_drains_open_connections_then_exits_0(spawn_instance):
    child = spawn_instance("--max-requests", "3")
    conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=10)
    for _ in range(3):
        assert post_run(conn).status == 200
    # It lives MIN_LIFETIME seconds, then stops listening...
    assert wait_until(lambda: "no longer accepting" in child.output(), recycle.MIN_LIFETIME + 5)
    fresh = http.client.HTTPConnection("127.0.0.1", child.port, timeout=2)
    try:
        fresh.request("GET", "/healthz")
        refused = False
    except ConnectionRefusedError:
        refused = True
    assert refused
    # ...but still answers on the connection that was open, and asks the peer to close it.
    response = post_run(conn)
    assert response.status == 200
    assert response.getheader("Connection") == "close"
    conn.close()
    assert child.wait(timeout=10) == 0
    assert "still open" not in child.output()


def test_recycle_lock_lets_one_instance_recycle_at_a_time(tmp_path, monkeypatch):
    path = str(tmp_path / "recycle.lock")
    first, second = RecycleLock(path), RecycleLock(path)
    assert first.try_acquire()
    assert not second.try_acquire()  # held
    first.stamp()
    os.close(first._fd)  # what the first instance's exit does
    assert not second.try_acquire()  # free, but the last recycle was just now
    monkeypatch.setattr(recycle, "COOLDOWN", 0.05)
    time.sleep(0.1)
    assert second.try_acquire()


def test_an_unusable_lock_path_does_not_stop_recycling(tmp_path):
    assert RecycleLock(str(tmp_path / "missing" / "recycle.lock")).try_acquire()


def test_sighup_recycles_without_max_requests(spawn_instance):
    child = spawn_instance()
    child.signal(signal.SIGHUP)
    assert child.wait(timeout=recycle.MIN_LIFETIME + 10) == 0
    assert "recycling after 0 requests" in child.output()
