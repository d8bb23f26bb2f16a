"""The lab: what builds a world on one machine for the tests and the benchmarks.

Network namespaces for a cluster's hosts (`lab.netns`), a throwaway PostgreSQL
(`lab.pgserver`), the stack's processes found by what they are (`lab.procs`), the local
stack's up and down (`lab.stack`, behind ``scripts/stack``), the local cluster's
(`lab.cluster` and `lab.cluster_parts`, behind ``scripts/cluster``), mutation testing
of the guards (`lab.mutate`, behind ``scripts/mutate``), and the container image's build
(`lab.image`, behind ``scripts/image``).

Not shipped: the wheel holds ``taskrunner`` only. The lab is imported by its name, with
the repository root on the path (the tests run from it; the doors in ``scripts/`` set
``PYTHONPATH``). It renders the configs it runs with the operators' renderer,
`taskrunner.deploy`.
"""
