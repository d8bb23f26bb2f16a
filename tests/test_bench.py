"""scripts/bench, the one bench tool, run for real and briefly: the experiments it lists,
each one's --help, a short load run against an instance it starts, and one experiment end
to end with tiny numbers; and docs/bench.md's log, whose every entry names a command that
re-runs it and which uses every experiment."""

import json
import os
import re
import shlex
import socket
import subprocess
import sys

from helpers import REPO

BENCH = os.path.join(REPO, "scripts", "bench")
EXPERIMENTS = sorted(
    name.removesuffix(".py") for name in os.listdir(os.path.join(REPO, "bench", "experiments"))
    if name.endswith(".py") and not name.startswith("_"))
ENV = {**os.environ, "PYTHON": sys.executable}


def bench(*args, timeout=60):
    return subprocess.run([BENCH, *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout, check=False)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_list_names_every_experiment_with_its_purpose():
    done = bench("experiment", "--list")
    assert done.returncode == 0, done.stderr
    listed = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert sorted(listed) == EXPERIMENTS
    assert all(len(purpose.strip()) > 20 for purpose in listed.values()), listed


def bench_md():
    with open(os.path.join(REPO, "docs", "bench.md")) as f:
        return f.read()


# A command at the start of a code span or of a line of a code block, as the log writes them.
RERUN = re.compile(r"(?:`|^)(?:scripts/bench|python -m pytest)\b", re.MULTILINE)


def entries(text):
    """The log's dated entries: {heading: body}."""
    log = text.split("\n## The log\n", 1)[1]
    parts = re.split(r"^### (\d{4}-\d\d-\d\d .+)$", log, flags=re.MULTILINE)[1:]
    return dict(zip(parts[::2], parts[1::2], strict=True))


def test_every_entry_of_the_log_names_a_command_that_re_runs_it():
    """Every figure in docs/bench.md names the command that re-runs it (issue 20): as far as
    a test can tell, every dated entry names one, of the bench tool or, for figures a test
    prints, of pytest."""
    found = entries(bench_md())
    assert len(found) > 20, sorted(found)
    assert [heading for heading, body in found.items() if not RERUN.search(body)] == []


def test_the_check_for_a_command_sees_an_entry_without_one():
    text = ("# B\n\n## The log\n\n### 2026-12-07 With one\n\n`scripts/bench experiment "
            "x 1`: 3/s\n\n### 2026-12-07 Without\n\nA one-off run by hand: 4/s, as "
            "scripts/bench would say\n")
    found = entries(text)
    assert [h for h, body in found.items() if not RERUN.search(body)] == ["2026-12-07 Without"]


def test_the_log_uses_every_experiment_and_names_only_existing_ones():
    """An experiment no entry of docs/bench.md re-runs is deleted (issue 20), and every
    experiment an entry names exists."""
    text = bench_md()
    named = set(re.findall(r"scripts/bench\s+experiment\s+([a-z_0-9]+)", text))
    assert named == set(EXPERIMENTS)
    # and each is re-run through the tool, not as a file of scripts/
    assert "python3 scripts/" not in text and "PYTHONPATH=" not in text


def test_every_experiment_answers_help_without_a_traceback():
    # All at once: each is a whole interpreter start, most of it waiting on imports.
    running = {name: subprocess.Popen([BENCH, "experiment", name, "--help"], env=ENV, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name in EXPERIMENTS}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, err) == (0, ""), name
        assert out.startswith(f"usage: scripts/bench experiment {name}"), out


def test_an_unknown_experiment_is_refused_without_a_traceback():
    done = bench("experiment", "no_such_experiment")
    assert done.returncode == 2
    assert "invalid choice: 'no_such_experiment'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_short_load_run_against_an_instance_it_starts_and_stops(tmp_path):
    port = free_port()
    done = bench("--workloads", "W1", "--duration", "1", "--rounds", "1", "--warmup", "0",
                 "--url", f"http://127.0.0.1:{port}", "--out", str(tmp_path), "--json",
                 "--cmd", f"{shlex.quote(sys.executable)} -m taskrunner --port {port}")
    assert done.returncode == 0, done.stderr
    w1 = json.loads(done.stdout)["summary"]["W1"]
    assert (w1["rounds"], w1["checks"], w1["errors"], w1["non2xx"]) == (1, ["ok"], 0, 0)
    assert w1["rps"] > 0 and w1["rss_idle_mib"] > 0
    assert "processes behind" not in done.stderr, done.stderr
    (log,) = (tmp_path / "logs").iterdir()
    assert f"listening on 127.0.0.1:{port}" in log.read_text()
    with socket.socket() as sock:  # stopped: nothing listens there any more
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_an_experiment_starts_its_own_instance_and_measures(tmp_path):
    done = bench("experiment", "job_store", REPO, "post", "40", "2")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"40 POST /jobs, 2 at a time: \d+/s, p50 [\d.]+ ms, p99 [\d.]+ ms\n",
                        done.stdout), done.stdout


def test_an_experiment_in_the_tool_itself_runs_to_the_end():
    done = bench("experiment", "spawn_paths", "20")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"((posix_spawnp\+setsid|Popen) +\d+ spawns/s +\d+ us parent CPU per "
                        r"spawn\n){4}", done.stdout), done.stdout
