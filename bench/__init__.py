"""The bench tool behind ``scripts/bench``: the load benchmark and the experiments.

Not shipped in the wheel; imported as ``bench`` with the repository on the path (the door,
``scripts/bench``, sets it). Modules: `load` (the load tool: options, rounds, report),
`workloads` (W1-W3, J0, J1 and their contract checks), `wrk` (running wrk with
``post.lua`` / ``jobs.lua``), `procs` (the server's processes, RSS and CPU from /proc),
`instance` (the one way to start and stop a server under test), `peers` (``--compare-peers``
through the shared harness), `experiment` (``scripts/bench experiment NAME``, which runs a
module of `bench.experiments`). See docs/bench.md.
"""
