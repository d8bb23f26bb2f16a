"""Which programs may run: ``--allow`` and the resolution of ``args[0]`` to a real file.

A program name is resolved the way the command itself would be executed — through the
``PATH`` of its own environment (the instance's, overlaid with the request's ``env``), or
relative to its ``cwd`` when the name contains a slash — and then through
``os.path.realpath``. The result is compared with the allowlist, whose entries were
resolved the same way (through the instance's ``PATH``) at startup, and it is the resolved
path that is executed, so the file that was checked is the file that runs. Hence
``./echo``, a symlink to a forbidden program, or a ``PATH`` of the caller's choosing do not
get around the list: only the real file counts. A request's ``PATH`` may still pick *which*
allowed program a bare name means, which grants nothing the list does not.

Resolved once, executed as checked. The name is looked up exactly once per command; the
absolute, symlink-free path that was compared is handed to the engine and through the
``--limit-*``/``--user`` wrappers as is (an ``execvp`` of a name with a slash searches
nothing), so a symlink renamed between check and exec changes nothing. What the path names
can change after the check only if the allowed file or one of its directories is
replaced, which takes write access to them, and with that the file could be replaced
before the check as well: no race is left that the list could close. Why not an fd
(``execveat``/``/proc/self/fd/N``), or a check of (st_dev, st_ino)? posix_spawn and the
wrappers take a path; an fd passed through a wrapper stays open in the command, and breaks
``#!`` scripts; and an inode check without fd execution still leaves the window open, while
it would refuse an allowed program upgraded in place.

With an allowlist, a request's ``env`` may not set the dynamic loader's variables
(``LD_*``, ``GCONV_PATH``): ``LD_PRELOAD`` would load any library into an allowed program.

Not guarded here: an allowed program that runs others (``sh``, ``env``, ``xargs``,
``python3``, ``find -exec``, a multi-call binary like busybox) allows everything it can run,
and so may a program-specific variable in ``env`` (``BASH_ENV``, ``PYTHONSTARTUP``,
``PERL5OPT``, ``GIT_SSH_COMMAND``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from taskrunner.errors import ProgramNotAllowed, SpawnError

_LOADER_VARIABLES = ("LD_", "GCONV_PATH")


def exec_path(env: Mapping[str, str]) -> list[str]:
    """The directories a bare program name is looked up in, as ``execvpe`` would."""
    return os.get_exec_path(dict(env))


def resolve(program: str, env: Mapping[str, str], cwd: str | None) -> str:
    """The real path of the executable file ``program`` names; `SpawnError` if there is none."""
    base = cwd if cwd is not None else os.getcwd()
    if "/" in program:
        candidates = [os.path.join(base, program)]
    else:
        # A relative PATH entry is relative to the command's cwd, as in Popen.
        candidates = [os.path.join(base, directory, program) for directory in exec_path(env)]
    reason = "No such file or directory"
    for candidate in candidates:
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return os.path.realpath(candidate)
            reason = "Permission denied"
    raise SpawnError(f"cannot start {program!r}: {reason}")


class Allowlist:
    """The real paths of the programs ``--allow`` names."""

    def __init__(self, programs: Iterable[str], env: Mapping[str, str]) -> None:
        self.paths = frozenset(resolve(program, env, None) for program in programs)

    def check(self, program: str, env: Mapping[str, str], cwd: str | None) -> str:
        """The real path to execute for ``program``; `ProgramNotAllowed` if it is not listed."""
        try:
            real = resolve(program, env, cwd)
        except SpawnError:
            # Nothing by that name can be executed, so it is none of the allowed programs;
            # saying 403 rather than "no such file" also tells a stranger nothing about files.
            raise ProgramNotAllowed(f"program {program!r} is not allowed on this instance") \
                from None
        if real not in self.paths:
            shown = "" if real == program else f" (it resolves to {real!r})"
            raise ProgramNotAllowed(f"program {program!r} is not allowed on this instance{shown}")
        return real

    def check_env(self, env: Mapping[str, str] | None) -> None:
        """`ProgramNotAllowed` if a request's ``env`` sets a dynamic loader variable."""
        for name in env or ():
            if name.startswith(_LOADER_VARIABLES):
                raise ProgramNotAllowed(
                    f"env {name!r} is not allowed on this instance: it could load other code "
                    "into an allowed program")
