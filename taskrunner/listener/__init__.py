"""The listener: client connections, below HTTP.

Accepting (`accept`), the connection cap (`connections`, `descriptors`, `tracked`), the
HTTPS port's door (`tlsdoor`), the lingering close (`linger`, `streams`) and the draining
server (`draining`). It is built on Tornado's private attributes, each named in
tests/listener/test_tornado_internals.py, which is why pyproject bounds Tornado below its
next minor release.

It imports nothing of `taskrunner.web`, `taskrunner.jobs`, `taskrunner.process` or the
wiring (an import-linter contract): what needs a decision of the layers above, such as
whether a request's headers carry a valid token, is passed in as a callable.
"""
