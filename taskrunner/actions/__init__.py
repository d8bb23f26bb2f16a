"""Actions (``--actions``): named commands with typed parameters, so a caller can be given
a button instead of a shell.

The file and its model (`actionfile`), a parameter's rules (`params`), the argument
template and its expansion (`template`). This package imports only the leaves (`errors`,
`config`): the HTTP layer turns an action into a `CommandSpec` and a `Policy` and starts it
through the launcher's one door, as ``/run`` and ``/jobs`` do.
"""
