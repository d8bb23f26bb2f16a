"""The databases a job index can live in: `sqlite` (``--state-dir``, the instances of one
host) and `postgresql` (``--state-url``, the hosts of a cluster). Each is a
`taskrunner.jobs.index.Backend`; `taskrunner.jobs.store.JobStore` drives either."""
