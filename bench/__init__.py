"""taskbench: the load benchmark behind ``scripts/bench`` (stdlib only, plus wrk).

Modules: `cli` (options, rounds, report), `workloads` (W1-W3, J1 and their contract
checks), `wrk` (running wrk with ``post.lua`` / ``jobs.lua``), `procs` (the server's processes,
RSS and CPU from /proc), `target` (start and stop a server with ``--cmd``), `peers`
(``--compare-peers`` through the shared harness). See docs/bench.md.
"""
