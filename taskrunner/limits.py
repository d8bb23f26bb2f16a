"""Boxing each command in: resource limits (``--limit-*``) and ``--user``.

Both are applied by exec wrappers from util-linux put before the command's argument list —
``prlimit --as=N:N ... --`` sets the limits, soft equal to hard so the command cannot raise
them, ``setpriv --reuid --regid --groups --`` drops to the user — and only when configured,
so the default spawn path stays the fast one. Measured on the 2-core CI machine
(2026-11-26, ``scripts/bench_spawn_wrappers.py``: /bin/true, piped output, own session,
30 MiB parent, Popen level):

    ==========================================  ===========
    how                                          spawns/s
    ==========================================  ===========
    plain Popen (vfork path)                     1,662
    preexec_fn calling setrlimit (fork path)       332
    prlimit wrapper (chosen for --limit-*)          717
    Popen(user=, group=, extra_groups=) (fork)     406
    preexec_fn: setrlimit + setuid (fork)          288
    setpriv wrapper (chosen for --user)            534
    prlimit + setpriv wrappers (both set)          349
    ==========================================  ===========

Any ``preexec_fn`` or ``user=`` forces CPython off its vfork path, which costs more than an
extra exec of a small binary, so wrappers win in every combination; they also keep the
engine's ``posix_spawn`` path. Through the engine on a busy machine
(``scripts/bench_engine_containment.py``): none 746-1,267/s, limits 581-828/s, ``--user``
507-671/s, both 414-530/s (the README's "Security model" has the table).

Because the wrapper, not the command, is what the engine executes, `Containment.check`
first resolves the program and checks ``cwd`` in this process: a missing program still
gets a clean 422, not the wrapper's exit status. The limits are per process (RLIMIT_*),
except ``--limit-nproc``, which the kernel counts per real user over all of that user's
processes and does not enforce for root — pair it with ``--user``.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

from taskrunner.allowlist import resolve
from taskrunner.auth import StartupError
from taskrunner.config import MIB, Config
from taskrunner.errors import SpawnError

log = logging.getLogger("taskrunner.limits")

# (Config field, prlimit option, unit in bytes or 1)
_LIMITS = (
    ("limit_as", "as", MIB),
    ("limit_cpu", "cpu", 1),
    ("limit_nproc", "nproc", 1),
    ("limit_fsize", "fsize", MIB),
    ("limit_nofile", "nofile", 1),
)


@dataclass(frozen=True)
class Containment:
    """The wrapper put before every command, and what ``--user`` changes in its env."""

    prefix: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """True when commands run through a wrapper."""
        return bool(self.prefix)

    def check(self, program: str, env: Mapping[str, str], cwd: str | None) -> str:
        """Check ``cwd`` and resolve ``program`` as the engine would: the real path to
        run; `SpawnError` if either is missing."""
        self.check_cwd(program, cwd)
        return resolve(program, env, cwd)

    def check_cwd(self, program: str, cwd: str | None) -> None:
        """`SpawnError` unless ``cwd`` is None or a directory, so that the wrapper's failure
        to change into it is a clean 422 (for a program resolved elsewhere, by the
        allowlist)."""
        if cwd is not None and not os.path.isdir(cwd):
            reason = "Not a directory" if os.path.exists(cwd) else "No such file or directory"
            raise SpawnError(f"cannot start {program!r}: working directory {cwd!r}: {reason}")


def containment_from_config(config: Config, environ: Mapping[str, str]) -> Containment:
    """Build the wrapper for ``config``; raise `StartupError` if it cannot be applied."""
    prefix: list[str] = []
    env: dict[str, str] = {}
    dropped = False  # do commands run as someone other than root?
    limits = [f"--{option}={getattr(config, name) * unit}:{getattr(config, name) * unit}"
              for name, option, unit in _LIMITS if getattr(config, name)]
    if limits:
        prefix += [_tool("prlimit", environ), *limits, "--"]
    if config.user:
        try:
            user = pwd.getpwnam(config.user)
        except KeyError:
            raise StartupError(f"--user {config.user!r}: no such user") from None
        env = {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name}
        if user.pw_uid != os.geteuid():
            if os.geteuid() != 0:
                raise StartupError(f"--user {config.user!r} needs the service to run as root")
            # Numeric ids and the group list resolved once here: no NSS lookup per spawn.
            groups = ",".join(str(g) for g in os.getgrouplist(user.pw_name, user.pw_gid))
            prefix += [_tool("setpriv", environ), f"--reuid={user.pw_uid}",
                       f"--regid={user.pw_gid}", f"--groups={groups}", "--"]
            dropped = True
    if config.limit_nproc and os.geteuid() == 0 and not dropped:
        log.warning("--limit-nproc does not bind commands that run as root; add --user")
    return Containment(tuple(prefix), env)


def _tool(name: str, environ: Mapping[str, str]) -> str:
    path = shutil.which(name, path=environ.get("PATH", os.defpath))
    if path is None:
        raise StartupError(f"{name} (util-linux) is needed for the configured limits or "
                           "--user and is not on PATH")
    return os.path.realpath(path)
