"""taskrunner: an HTTP service that runs OS commands for its callers without blocking."""

__version__ = "0.1.0"
