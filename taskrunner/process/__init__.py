"""The process layer: starting, watching, limiting and killing commands on this
machine. Imports nothing of `taskrunner.jobs` or `taskrunner.web`, and no `tornado.web`."""
