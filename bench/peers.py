"""``--compare-peers``: hand the same target to the shared harness's ``compare.sh``.

The shared harness (``../shared/bench`` beside the repository, or ``$TASKRUNNER_SHARED_BENCH``)
already starts peer servers, interleaves them with a target round by round (target, peer1,
peer2, ...) and prints target/peer ratios, with the same wrk requests as ours. We do not
duplicate that: we run it, with our target's command (or, for a running target, its pids),
and read its raw records back for ``--json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.instance import REPO

ENV_VAR = "TASKRUNNER_SHARED_BENCH"
HARNESS_WORKLOADS = ("W1", "W2", "W3")


def find_harness() -> Path:
    """The shared harness directory: ``$TASKRUNNER_SHARED_BENCH`` or ``<repo>/../shared/bench``."""
    candidates = ([Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR)
                  else [REPO.parent / "shared" / "bench"])
    for path in candidates:
        if (path / "compare.sh").is_file():
            return path.resolve()
    raise SystemExit(f"bench: no shared harness (compare.sh) in {', '.join(map(str, candidates))};"
                     f" set {ENV_VAR}=/path/to/shared/bench")


def compare(base: str, cmd: str | None, cwd: Path, server_pids: set[int], peers: list[str],
            workloads: list[str], rounds: int, duration: int, threads: int, out_dir: Path,
            to_stderr: bool) -> list[dict[str, Any]]:
    """Run compare.sh (target + peers, interleaved); return its raw records.

    Its output goes to our stdout (or stderr with ``to_stderr``). Bounded: the harness is
    interrupted (SIGINT, so it stops the servers it started) when it overruns its budget.
    """
    harness = find_harness()
    argv = [str(harness / "compare.sh"), "--url", base + "/run", "--label", "taskrunner",
            "--peers", ",".join(peers), "--workloads", ",".join(workloads),
            "--rounds", str(rounds), "--duration", str(duration), "--threads", str(threads),
            "--cwd", str(cwd)]
    if cmd:
        argv += ["--target", cmd]
    elif server_pids:
        argv += ["--server-pids", ",".join(map(str, sorted(server_pids)))]
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, BENCH_OUT=str(out_dir))
    # per system and round: start + warm-up + drains, then each workload with its check
    budget = rounds * (1 + len(peers)) * (90 + len(workloads) * (duration + 60))
    print(f"bench: {' '.join(argv)}  (BENCH_OUT={out_dir}, at most {budget} s)",
          file=sys.stderr, flush=True)
    proc = subprocess.Popen(argv, env=env, start_new_session=True,
                            stdout=sys.stderr if to_stderr else None)
    try:
        code = proc.wait(timeout=budget)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        _interrupt(proc)
        raise
    if code != 0:
        raise SystemExit(f"bench: compare.sh exited {code}")
    records: list[dict[str, Any]] = []
    for path in sorted((out_dir / "results").glob("*-compare.jsonl")):
        with open(path) as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    # SIGINT, not SIGTERM: bench.py then unwinds through its finally blocks and stops the
    # servers it started (they run in sessions of their own, out of reach of a group kill).
    for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
