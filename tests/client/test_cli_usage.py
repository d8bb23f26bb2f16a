"""``trun run --usage`` and ``trun wait --usage``: one line on stderr, as time(1)'s, once the
command has ended; nothing without the flag."""

from __future__ import annotations

import re

import pytest
from cliutil import trun
from helpers import PY

BUSY = ("import time\nt = time.process_time()\n"
        "while time.process_time() - t < 0.3:\n    for _ in range(10000): pass\n"
        "print('done')")
LINE = re.compile(rb"^(\d+\.\d\d) s user, (\d+\.\d\d) s system, (\d+\.\d) MiB peak, "
                  rb"waited (\d+\.\d\d) s$")


@pytest.fixture
def url(spawn_instance):
    return spawn_instance("--max-running", "1").url


def test_run_usage_says_what_the_command_cost_in_one_line_after_it(url):
    done = trun(url, "run", "--usage", "--", PY, "-c", BUSY)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"done\n"
    *_, last = done.stderr.splitlines()
    found = LINE.match(last)
    assert found, done.stderr
    user, system, peak, waited = (float(x) for x in found.groups())
    assert 0.2 <= user <= 2.0 and user + system >= 0.28
    assert peak > 1 and waited == 0.0
    plain = trun(url, "run", "--", "true")
    assert plain.returncode == 0 and plain.stderr == b""


def test_wait_usage_after_a_detached_job_and_a_wait_for_a_slot(url):
    blocker = trun(url, "run", "--detach", "--", "sleep", "2").stdout.decode().strip()
    queued = trun(url, "run", "--detach", "--", "true").stdout.decode().strip()
    done = trun(url, "wait", "--usage", queued)
    assert done.returncode == 0, done.stderr
    found = LINE.match(done.stderr.strip())
    assert found, done.stderr
    assert float(found.group(4)) >= 0.5  # it waited for the blocker's slot
    assert trun(url, "wait", blocker).returncode == 0
