"""W1 and W3 through the front of a two-host cluster against one host's stack.

The cluster (scripts/cluster) and the stack (scripts/stack) are loaded in one run: each
round runs every workload on both, the order alternating from round to round; medians, and
the median of the per-round ratios. Both run at once on this machine (idle while the other
is loaded), with the same token, so the only difference is the front and the hosts'
network. Needs root (the cluster's namespaces) and wrk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from bench import workloads, wrk
from bench.instance import REPO

SCRIPTS = REPO / "scripts"
STACK_PORT, STACK_BASE = 19680, 19685
FRONT_PORT, FIRST_PORT, PG_PORT = 19690, 18900, 55530
CLUSTER_FLAGS = ["--hosts", "2", "--instances", "2", "--port", str(FRONT_PORT),
                 "--first-port", str(FIRST_PORT), "--pg-port", str(PG_PORT),
                 "--prefix", "tbench", "--subnet", "10.76.0.0/16"]


def _script(name: str, *args: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run([str(SCRIPTS / name), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})},
                          check=False, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"{name} {args[0]}: {(done.stderr or done.stdout).strip()}")


def measure(rounds: int, duration: int, token: str) -> dict[str, list[dict[str, float]]]:
    """Per workload, one entry per round: the req/s through the front and the stack."""
    os.environ["WRK_AUTH"] = f"Bearer {token}"
    targets = {"front": f"http://127.0.0.1:{FRONT_PORT}/run",
               "stack": f"http://127.0.0.1:{STACK_PORT}/run"}
    found: dict[str, list[dict[str, float]]] = {"W1": [], "W3": []}
    for number in range(rounds):
        for name in found:
            load = workloads.WORKLOADS[name]
            order = list(targets) if number % 2 == 0 else list(reversed(targets))
            got: dict[str, float] = {}
            for target in order:
                result: dict[str, Any] = wrk.run(targets[target], wrk.POST_LUA,
                                                 load.body_json, load.conns, duration)
                errors = sum(result[k] for k in ("connect", "read", "write", "status"))
                if errors:
                    raise RuntimeError(f"{name} on the {target}: {errors} errors: {result}")
                got[target] = result["requests"] / (result["duration_us"] / 1e6)
            found[name].append(got)
            print(f"round {number + 1} {name}: front {got['front']:,.1f} req/s, "
                  f"stack {got['stack']:,.1f}", file=sys.stderr)
    return found


def report(found: dict[str, list[dict[str, float]]]) -> str:
    dash = "\N{EN DASH}"
    lines = ["| workload | front (2 hosts) req/s | stack req/s | front / stack |",
             "|---|---|---|---|"]
    for name, runs in found.items():
        front = [r["front"] for r in runs]
        stack = [r["stack"] for r in runs]
        ratios = [r["front"] / r["stack"] for r in runs]
        lines.append(
            f"| {name} | {statistics.median(front):,.1f} ({min(front):,.1f}{dash}"
            f"{max(front):,.1f}) | {statistics.median(stack):,.1f} ({min(stack):,.1f}{dash}"
            f"{max(stack):,.1f}) | {statistics.median(ratios):.2f} ({min(ratios):.2f}{dash}"
            f"{max(ratios):.2f}) |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Bring the cluster and the stack up, measure both, take them down; 1 on a failure."""
    parser = argparse.ArgumentParser(prog="scripts/bench experiment cluster",
                                     description=__doc__.split("\n\n")[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args(argv)
    wrk.ensure_wrk()
    workloads.ensure_w3_file()
    base = tempfile.mkdtemp(prefix="taskrunner-bench-cluster-", dir="/tmp")
    os.chmod(base, 0o755)  # PostgreSQL's user reaches its directory in there
    cluster = ["--run-dir", f"{base}/cluster"]
    stack_env = {"TASKRUNNER_PORT": str(STACK_PORT), "TASKRUNNER_BASE_PORT": str(STACK_BASE),
                 "TASKRUNNER_RUN_DIR": f"{base}/stack"}
    try:
        _script("cluster", "up", *CLUSTER_FLAGS, *cluster)
        with open(f"{base}/cluster/token") as f:
            token = f.read().strip()
        _script("stack", "up", env={**stack_env, "TASKRUNNER_TOKEN": token})
        found = measure(args.rounds, args.duration, token)
    except RuntimeError as exc:
        print(f"bench experiment cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        subprocess.run([str(SCRIPTS / "cluster"), "down", *cluster], check=False,
                       capture_output=True, env={**os.environ, "PYTHON": sys.executable})
        subprocess.run([str(SCRIPTS / "stack"), "down"], check=False,
                       capture_output=True,
                       env={**os.environ, "PYTHON": sys.executable, **stack_env})
    print(report(found))
    return 0

