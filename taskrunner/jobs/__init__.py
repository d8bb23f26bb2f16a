"""The jobs layer: long commands as jobs, their output and their store. Built on
`taskrunner.process`; imports nothing of `taskrunner.web`."""
