"""The HTTP layer: Tornado application, handlers, validation, access log, listener
and recycling. The top layer: built on `taskrunner.jobs` and `taskrunner.process`."""
