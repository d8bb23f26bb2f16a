"""Boxing each command in: resource limits (``--limit-*``), ``--user`` and ``--sandbox``.

Both are applied by exec wrappers from util-linux put before the command's argument list —
``prlimit --as=N:N ... --`` sets the limits, soft equal to hard so the command cannot raise
them, ``setpriv --reuid --regid --groups --`` drops to the user — and only when configured,
so the default spawn path stays the fast one. A wrapper, not a ``preexec_fn`` or Popen's
``user=``: those force CPython off its vfork path, which costs more than one extra exec of
a small binary in every combination, and wrappers also keep the engine's ``posix_spawn``
path (figures in docs/bench.md, "What the guards cost").

Because the wrapper, not the command, is what the engine executes, `Containment.check`
first resolves the program and checks ``cwd`` in this process: a missing program still
gets a clean 422, not the wrapper's exit status. The limits are per process (RLIMIT_*),
except ``--limit-nproc``, which the kernel counts per real user over all of that user's
processes and does not enforce for root — pair it with ``--user``.

With ``--sandbox`` (`taskrunner.process.sandbox`) the wrappers nest: ``prlimit``, then
``bwrap``, then ``setpriv`` inside the sandbox (bubblewrap makes its namespaces as root
when the service runs as root, and needs no user namespace then). They are put together
for each command, with its cgroup's, by `taskrunner.process.confinement`.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

from taskrunner.config import MIB, Config
from taskrunner.errors import SpawnError, StartupError
from taskrunner.process.allowlist import resolve
from taskrunner.process.sandbox import Sandbox, sandbox_from_config

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
    """The wrapper put before every command, and what ``--user`` changes in its env.

    ``prefix`` is the whole wrapper without a sandbox; with one, what runs before
    ``bwrap``, and ``inner`` what runs inside it (`Confinement` puts them together).
    """

    prefix: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    sandbox: Sandbox | None = None
    inner: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        """True when commands run through a wrapper."""
        return bool(self.prefix) or self.sandbox is not None

    def check(self, program: str, env: Mapping[str, str], cwd: str | None) -> str:
        """Check ``cwd`` and resolve ``program`` as the engine would: the real path to
        run; `SpawnError` if either is missing (or, sandboxed, not visible inside)."""
        self.check_cwd(program, cwd)
        return self._visible(resolve(program, env, cwd), program, cwd)

    def check_resolved(self, real: str, program: str, cwd: str | None) -> str:
        """The same checks for a program already resolved to ``real`` (by the allowlist),
        which is what runs: nothing looks the name up again."""
        self.check_cwd(program, cwd)
        return self._visible(real, program, cwd)

    def check_cwd(self, program: str, cwd: str | None) -> None:
        """`SpawnError` unless ``cwd`` is None or a directory, so that the wrapper's failure
        to change into it is a clean 422."""
        if cwd is not None and not os.path.isdir(cwd):
            reason = "Not a directory" if os.path.exists(cwd) else "No such file or directory"
            raise SpawnError(f"cannot start {program!r}: working directory {cwd!r}: {reason}")

    def _visible(self, real: str, program: str, cwd: str | None) -> str:
        if self.sandbox is not None:
            self.sandbox.check(real, "program", program)
            if cwd is not None:
                self.sandbox.check(os.path.realpath(cwd), "working directory", program)
        return real

    def retire(self) -> None:
        """Release what the wrappers hold once no command uses them (a caller's, replaced
        on a reload), without waiting."""
        if self.sandbox is not None:
            self.sandbox.retire()

    def close(self) -> None:
        """Release what the wrappers hold (the sandbox's work root)."""
        if self.sandbox is not None:
            self.sandbox.close()


def containment_from_config(config: Config, environ: Mapping[str, str]) -> Containment:
    """Build the wrapper for ``config``; raise `StartupError` if it cannot be applied."""
    prefix: list[str] = []
    inner: list[str] = []
    env: dict[str, str] = {}
    owner: tuple[int, int] | None = None  # who the work directories belong to (--user)
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
            inner += [_tool("setpriv", environ), f"--reuid={user.pw_uid}",
                      f"--regid={user.pw_gid}", f"--groups={groups}", "--"]
            owner = (user.pw_uid, user.pw_gid)
            dropped = True
    if config.limit_nproc and os.geteuid() == 0 and not dropped:
        log.warning("--limit-nproc does not bind commands that run as root; add --user")
    if not config.sandbox:
        return Containment((*prefix, *inner), env)
    sandbox = sandbox_from_config(config, environ, owner)
    env["TMPDIR"] = "/tmp"  # the private one; the instance's TMPDIR may be hidden inside
    log.info("--sandbox: commands run under %s (work directories in %s%s)", sandbox.bwrap,
             sandbox.work_root, "" if config.sandbox_net else ", no network")
    return Containment(tuple(prefix), env, sandbox, tuple(inner))


def _tool(name: str, environ: Mapping[str, str]) -> str:
    path = shutil.which(name, path=environ.get("PATH", os.defpath))
    if path is None:
        raise StartupError(f"{name} (util-linux) is needed for the configured limits or "
                           "--user and is not on PATH")
    return os.path.realpath(path)
