"""The load tool, ``scripts/bench [options]``: options, the rounds, and the report.

Per round: [start ``--cmd`` and wait until it answers] -> 2 s warm-up -> for each workload:
contract check, one wrk run with the server's RSS and CPU sampled, drain (one probe request),
RSS after -> [stop the command's process group]. The report is the median over rounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import peers, procs, workloads, wrk
from bench.instance import REPO, Instance, become_subreaper, port_open, sweep_orphans
from bench.workloads import WORKLOADS, Workload

USAGE = """\
Load a taskrunner on this machine with wrk: W1 ["true"] x32 connections, W2 ["sleep","0.5"]
x200, W3 1 MiB of stdout x8, J0 POST /jobs (submit only) x32, J1 POST /jobs + poll to the
end x32. Prints req/s, p50, p99, errors, non-2xx, the server's RSS (idle / peak / after)
and CPU; median of --rounds.

  scripts/bench                                        # a running instance on :8885
  scripts/bench --cmd 'python3 -m taskrunner --port 8885' --duration 5 --rounds 1
  scripts/bench --url http://127.0.0.1:8080 --server-ports 8080,8885,8886,8887,8888
  scripts/bench --url https://127.0.0.1:8885 --cmd 'python3 -m taskrunner --port 8885 \\
                --certfile cert.pem --keyfile key.pem'      # wrk and the checks over TLS
  scripts/bench --cmd 'python3 -m taskrunner --port 8885' \\
                --compare-peers tornado_seed,tornado_sub,webhook   # ../shared/bench, interleaved

What the load does not measure has an experiment: scripts/bench experiment --list.
"""
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
W2_IDEAL = 400.0  # 200 connections / 0.5 s


@dataclass(frozen=True)
class Options:
    """Everything one benchmark session needs, built from the command line."""

    base: str
    host: str
    port: int
    workloads: list[str]
    duration: int
    rounds: int
    threads: int
    warmup: int
    conns: dict[str, int]
    cmd: str | None
    cwd: Path
    pids: list[int]
    server_ports: list[int]
    compare_peers: list[str]
    json: bool
    out: Path


class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples' lines and shows each option's default."""


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_options(argv: list[str] | None = None) -> Options:
    """Parse ``argv`` (default ``sys.argv[1:]``); exit 2 on a bad option."""
    ap = argparse.ArgumentParser(
        prog="scripts/bench", description=USAGE,
        formatter_class=_HelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8885",
                    help="base URL of the running target (loopback only)")
    ap.add_argument("--workloads", default="W1,W2,W3,J0,J1",
                    help="comma-separated, of W1,W2,W3,J0,J1")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs per workload; the median is reported")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded W1 at 8 "
                    "connections before each round's first workload (0: none)")
    ap.add_argument("--conns", default="", help="override connections, e.g. W1=64,J1=16")
    ap.add_argument("--cmd", help="start the target with this shell command in --cwd (it must "
                    "stay in the foreground and serve --url), stop its process group afterwards;"
                    " restarted every round")
    ap.add_argument("--cwd", default=str(REPO), help="working directory for --cmd")
    ap.add_argument("--pids", default="", help="server pids to sample (RSS/CPU); default: "
                    "whatever listens on --server-ports, with its descendants")
    ap.add_argument("--server-ports", default="", help="ports whose listeners make up the server, "
                    "e.g. 8080,8885,8886,8887,8888 for the stack (default: the port of --url)")
    ap.add_argument("--compare-peers", default="", help="e.g. tornado_seed,tornado_sub,webhook: "
                    "run the shared harness's compare.sh on this target and these peers instead")
    ap.add_argument("--json", action="store_true", help="print one JSON document on stdout "
                    "(progress goes to stderr either way)")
    ap.add_argument("--out", default=os.environ.get("BENCH_OUT", "/tmp/taskrunner-bench"),
                    help="directory for the target's log and the harness's raw records")
    a = ap.parse_args(argv)

    url = urllib.parse.urlsplit(a.url.rstrip("/"))
    if url.scheme not in ("http", "https") or url.hostname not in LOOPBACK:
        ap.error(f"--url must be http:// or https:// on the loopback "
                 f"({', '.join(sorted(LOOPBACK))}); this benchmark only loads the local machine")
    base = f"{url.scheme}://{url.netloc}{url.path.removesuffix('/run')}"
    names = [w.upper() for w in _csv(a.workloads)]
    if unknown := [w for w in names if w not in WORKLOADS]:
        ap.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    conns = {}
    for item in _csv(a.conns):
        name, _, value = item.partition("=")
        if name.upper() not in WORKLOADS or not value.isdigit() or int(value) < 1:
            ap.error(f"bad --conns item {item!r}")
        conns[name.upper()] = int(value)
    if a.duration < 1 or a.rounds < 1 or a.threads < 1 or a.warmup < 0:
        ap.error("--duration, --rounds and --threads must be >= 1, --warmup >= 0")
    port = url.port or (443 if url.scheme == "https" else 80)
    return Options(
        base=base, host=url.hostname or "127.0.0.1", port=port, workloads=names,
        duration=a.duration, rounds=a.rounds, threads=a.threads, warmup=a.warmup,
        conns=conns, cmd=a.cmd, cwd=Path(a.cwd), pids=[int(p) for p in _csv(a.pids)],
        server_ports=[int(p) for p in _csv(a.server_ports)] or [port],
        compare_peers=_csv(a.compare_peers), json=a.json, out=Path(a.out))


def say(text: str) -> None:
    """Progress, on stderr, so ``--json`` keeps stdout clean."""
    print(text, file=sys.stderr, flush=True)


def server_pids(opts: Options) -> set[int]:
    """The server's processes now (idle): --pids, or the listeners on --server-ports; + tree."""
    roots = set(opts.pids) or procs.pids_listening(opts.server_ports)
    if not roots:
        say(f"bench: warning: found no process listening on {opts.server_ports} "
            "(not root? another user?); RSS and server CPU are not reported")
    return procs.process_tree(roots)


def wait_ready(opts: Options, tgt: Instance, timeout: float = 30.0) -> None:
    """Until one W1 request passes its check; exit if the command dies or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (code := tgt.exited()) is not None:
            raise SystemExit(f"bench: --cmd exited with {code}; see {tgt.log_path}")
        if (port_open(opts.host, opts.port)
                and workloads.check(WORKLOADS["W1"], opts.base) == "ok"):
            return
        time.sleep(0.2)
    raise SystemExit(f"bench: {opts.base} not ready {timeout:.0f} s after --cmd; "
                     f"see {tgt.log_path}")


def drain(opts: Options, limit: float = 60.0) -> float:
    """Seconds until one probe request answers (a backlog from the last load has cleared)."""
    t0 = time.monotonic()
    try:
        workloads.request("POST", opts.base + "/run", WORKLOADS["W1"].body, timeout=limit)
    except OSError as exc:
        say(f"bench: warning: drain probe failed: {exc}")
    time.sleep(0.5)
    return time.monotonic() - t0


def _mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


def measure(opts: Options, wl: Workload, rnd: int, pids: set[int]) -> dict[str, Any]:
    """Check, load, drain one workload; one record (only ``check`` if the check failed)."""
    rec: dict[str, Any] = {"round": rnd, "workload": wl.name,
                           "conns": opts.conns.get(wl.name, wl.conns)}
    rec["check"] = workloads.check(wl, opts.base)
    if rec["check"] != "ok":
        say(f"[r{rnd}] {wl.name} skipped, contract check: {rec['check']}")
        return rec
    idle = procs.rss_kib(pids) if pids else None
    cpu0, t0 = procs.cpu_seconds(pids), time.monotonic()
    with procs.RssSampler(pids) as sampler:
        res = wrk.run(opts.base + wl.path, wl.lua, wl.body_json, rec["conns"], opts.duration,
                      opts.threads)
    wall = time.monotonic() - t0
    cpu = (procs.cpu_seconds(pids) - cpu0) / wall if pids else None
    rec["drain_s"] = round(drain(opts), 2)
    after = procs.rss_kib(pids) if pids else None
    secs = res["duration_us"] / 1e6
    problems = res.get("unexpected", 0) + res.get("failed", 0)
    rec.update({
        "rps": (res["jobs"] if wl.name == "J1" else res["requests"]) / secs,
        "p50_ms": res["p50_us"] / 1000, "p99_ms": res["p99_us"] / 1000,
        "max_ms": res["max_us"] / 1000, "requests": res["requests"],
        "errors": sum(res[k] for k in ("connect", "read", "write", "timeout")) + problems,
        "error_detail": {k: res[k] for k in ("connect", "read", "write", "timeout",
                                             "unexpected", "failed") if k in res},
        "non2xx": res["status"],
        "rss_idle_mib": _mib(idle), "rss_peak_mib": _mib(sampler.peak_kib if pids else None),
        "rss_after_mib": _mib(after), "server_cpu": cpu, "wrk_cpu": res["wrk_cpu_s"] / wall,
        "server_procs": len(pids), "wrk": res["cmd"],
    })
    if wl.name == "J1":
        rec.update({"jobs": res["jobs"], "http_rps": res["requests"] / secs,
                    "requests_per_job": res["requests"] / max(res["jobs"], 1),
                    "job_p50_ms": res["job_p50_us"] / 1000,
                    "job_p99_ms": res["job_p99_us"] / 1000})
    say(f"[r{rnd}] {wl.name} {rec['rps']:.1f}/s p50={rec['p50_ms']:.2f}ms "
        f"p99={rec['p99_ms']:.2f}ms errors={rec['errors']} non2xx={rec['non2xx']} "
        f"rss idle/peak/after={_fmt(rec['rss_idle_mib'])}/{_fmt(rec['rss_peak_mib'])}/"
        f"{_fmt(rec['rss_after_mib'])}MiB server_cpu={_fmt(cpu, '.2f')} "
        f"wrk_cpu={rec['wrk_cpu']:.2f} drain={rec['drain_s']}s")
    return rec


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def session(opts: Options) -> list[dict[str, Any]]:
    """All rounds of all workloads against the target; the raw records."""
    records = []
    for rnd in range(1, opts.rounds + 1):
        tgt = None
        if opts.cmd:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            tgt = Instance(["sh", "-c", opts.cmd], opts.out / "logs" / f"{stamp}-target.log",
                           cwd=opts.cwd, host=opts.host, port=opts.port, sweep=True)
        try:
            if tgt:
                tgt.start()
                wait_ready(opts, tgt)
            pids = server_pids(opts)
            if opts.warmup:
                wrk.run(opts.base + "/run", wrk.POST_LUA, WORKLOADS["W1"].body_json, 8,
                        opts.warmup, opts.threads)
                drain(opts)
            for name in opts.workloads:
                records.append(measure(opts, WORKLOADS[name], rnd, pids))
        finally:
            if tgt and (left := tgt.stop()):
                say(f"bench: warning: the target left {len(left)} processes behind "
                    f"(killed): {left}")
    return records


def summarize(records: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per workload: medians over the rounds that ran, errors summed, the checks seen."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        recs = [r for r in records if r["workload"] == name]
        ran = [r for r in recs if "rps" in r]
        row: dict[str, Any] = {"rounds": len(ran), "checks": sorted({r["check"] for r in recs})}
        if ran:
            row["conns"] = ran[0]["conns"]
            row["rps_min"] = min(r["rps"] for r in ran)
            row["rps_max"] = max(r["rps"] for r in ran)
            for key in ("rps", "p50_ms", "p99_ms", "rss_idle_mib", "rss_peak_mib",
                        "rss_after_mib", "server_cpu", "wrk_cpu", "requests_per_job",
                        "job_p50_ms", "job_p99_ms"):
                vals = [r[key] for r in ran if r.get(key) is not None]
                row[key] = statistics.median(vals) if vals else None
            row["errors"] = sum(r["errors"] for r in ran)
            row["non2xx"] = sum(r["non2xx"] for r in ran)
        out[name] = row
    return out


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    """The summary as a Markdown table, then notes against the targets in the issues."""
    print("| workload | conns | req/s median (min-max) | p50 ms | p99 ms | errors | non-2xx "
          "| RSS MiB idle / peak / after | server CPU | wrk CPU | check |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        check = ", ".join(s["checks"])
        if not s["rounds"]:
            print(f"| {name} | - | not run | | | | | | | | {check} |")
            continue
        print(f"| {name} | {s['conns']} | {s['rps']:.1f} ({s['rps_min']:.1f}-{s['rps_max']:.1f})"
              f" | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['errors']} | {s['non2xx']} | "
              f"{_fmt(s['rss_idle_mib'])} / {_fmt(s['rss_peak_mib'])} / "
              f"{_fmt(s['rss_after_mib'])} | {_fmt(s['server_cpu'], '.2f')} | "
              f"{s['wrk_cpu']:.2f} | {check} |")
    w1, w2, j0, j1 = (summary.get(n, {}) for n in ("W1", "W2", "J0", "J1"))
    if w2.get("rounds"):
        print(f"\nW2: {w2['rps'] / W2_IDEAL:.1%} of the ideal {W2_IDEAL:.0f} req/s "
              "(a 10 s closed-loop run tops out near 95%).")
    if j1.get("rounds"):
        line = (f"\nJ1: jobs/s; {j1['requests_per_job']:.2f} HTTP requests per job; p50/p99 "
                f"are per HTTP request; job latency (202 to end state) p50 "
                f"{j1['job_p50_ms']:.2f} ms, p99 {j1['job_p99_ms']:.2f} ms.")
        if w1.get("rounds"):
            line += f" J1/W1 = {j1['rps'] / w1['rps']:.2f}."
        print(line)
    if j0.get("rounds") and w1.get("rounds"):
        print(f"\nJ0/W1 = {j0['rps'] / w1['rps']:.2f}: W1 with jobs instead of /run "
              "(issue 3 asks >= 0.80).")
    print("\nreq/s: completed requests (J1: finished jobs) per second; errors: wrk socket "
          "errors + timeouts (+ J1 jobs lost or not exited 0); non-2xx: HTTP >= 400; "
          "CPU in cores (server: its processes + the commands they reaped).")


def ratios(records: list[dict[str, Any]], peer_names: list[str]) -> list[dict[str, Any]]:
    """Per workload and peer: median over rounds of taskrunner/peer (req/s and p99)."""
    rows = []
    wls = sorted({r["workload"] for r in records})
    for peer in peer_names:
        for wl in wls:
            ours = {r["round"]: r for r in records
                    if r["label"] == "taskrunner" and r["workload"] == wl}
            theirs = {r["round"]: r for r in records if r["label"] == peer and r["workload"] == wl}
            both = sorted(set(ours) & set(theirs))
            if both:
                rows.append({
                    "workload": wl, "peer": peer, "rounds": len(both),
                    "rps": statistics.median(ours[i]["rps"] for i in both),
                    "peer_rps": statistics.median(theirs[i]["rps"] for i in both),
                    "rps_ratio": statistics.median(
                        ours[i]["rps"] / theirs[i]["rps"] for i in both if theirs[i]["rps"]),
                    "p99_ratio": statistics.median(
                        ours[i]["p99_ms"] / theirs[i]["p99_ms"] for i in both
                        if theirs[i]["p99_ms"]),
                })
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark session the options describe and report it; 0 (a failure exits)."""
    opts = parse_options(argv)
    wrk.ensure_wrk()
    workloads.ensure_w3_file()
    started = datetime.datetime.now(datetime.UTC)
    head = {"date": started.isoformat(timespec="seconds"), "url": opts.base, "cmd": opts.cmd,
            "rounds": opts.rounds, "duration_s": opts.duration, "wrk_threads": opts.threads,
            "nproc": os.cpu_count(), "loadavg_at_start": os.getloadavg()[0]}
    say(f"# scripts/bench {json.dumps(head)}")
    # orphans of --cmd (or of the peers the harness starts) re-parent to us, to be swept
    become_subreaper()
    if opts.compare_peers:
        names = [w for w in opts.workloads if w in peers.HARNESS_WORKLOADS]
        if dropped := [w for w in opts.workloads if w not in names]:
            say(f"bench: the peers have no {', '.join(dropped)}; comparing {', '.join(names)}")
        pids = set() if opts.cmd else server_pids(opts)
        try:
            records = peers.compare(opts.base, opts.cmd, opts.cwd, pids, opts.compare_peers, names,
                                    opts.rounds, opts.duration, opts.threads,
                                    opts.out / started.strftime("%Y%m%d-%H%M%S"), opts.json)
        finally:
            if left := sweep_orphans():
                say(f"bench: warning: {len(left)} processes were left behind (killed): {left}")
        if opts.json:
            print(json.dumps({**head, "mode": "compare-peers", "peers": opts.compare_peers,
                              "ratios": ratios(records, opts.compare_peers),
                              "records": records}, indent=1))
        return 0
    records = session(opts)
    summary = summarize(records, opts.workloads)
    if opts.json:
        print(json.dumps({**head, "mode": "bench", "summary": summary, "records": records},
                         indent=1))
    else:
        print(f"\n# {head['date']}  {opts.base}  cmd={opts.cmd!r}  {opts.rounds} round(s) x "
              f"{opts.duration} s, wrk -t{opts.threads}")
        print_table(summary)
    return 0
