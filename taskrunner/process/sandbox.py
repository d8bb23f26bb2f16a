"""``--sandbox``: every command under bubblewrap, in namespaces of its own.

`sandbox_from_config` builds one `Sandbox` from a `Config`: the ``bwrap`` options, fixed at
startup, and a work root on the host. For each command, `Sandbox.enter` makes a fresh work
directory and returns the argument-list prefix that runs the command in it; `Sandbox.leave`
removes the directory when the command has ended. It is an exec wrapper like ``prlimit`` and
``setpriv`` (`taskrunner.process.containment`), so the engine's spawn path is unchanged.

What a command sees (the order of the mounts matters; each shadows what is under it):

* the host's root, bound read-only (and ``nosuid``, as every bubblewrap bind); the program
  the allowlist resolved is the same file inside, which `Sandbox.check` makes sure of;
* a fresh ``/proc`` of a new PID namespace: only the command's own processes;
* a minimal ``/dev`` (null, zero, random, tty, ...), read-only, with a ``/dev/shm`` and a
  ``/tmp`` that are private tmpfs of ``--sandbox-tmp-size`` MiB each;
* empty, read-only ``/run`` and ``/var/tmp``: no host daemon's socket under ``/run`` (a
  read-only bind does not stop ``connect`` on a Unix socket) and no other command's work;
* ``--sandbox-bind-ro`` and ``--sandbox-bind`` paths, at the same place;
* its work directory, writable, at the same path as on the host (under ``/var/tmp``): the
  default ``cwd``.

New IPC and UTS namespaces, and a new network namespace (loopback only) unless
``--sandbox-net``. No capability is kept, except those the ``setpriv`` of ``--user`` needs
to drop to the user and to enter its work directory: it runs inside, and the uid change
clears them before the command runs.

The sandbox dies with its command. bubblewrap's own PID 1 exits when the command's main
process does, and the kernel then kills every process left in the namespace, ``setsid``
and double-fork escapees included; a timeout or cancel kills the command's group, which
holds bubblewrap's two processes, with the same effect. ``--die-with-parent`` (a
parent-death signal) and the watchdog cover a killed instance. No ``--new-session``: it
would move the sandbox out of the group the engine kills (the command has no terminal to
fake input into anyway).

Run as root, bubblewrap makes the namespaces itself; as another user it makes a user
namespace first, where the kernel allows it. At startup, `sandbox_from_config` runs one
sandbox with the full set of options and raises `StartupError` if it fails: an instance
never runs commands unsandboxed because ``--sandbox`` did not work.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from taskrunner.config import MIB, Config
from taskrunner.errors import SpawnError, StartupError

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("taskrunner.sandbox")

WORK_PARENT = "/var/tmp"
"""Where the work roots live on the host: on disk (unlike ``/tmp`` on many hosts), and
hidden inside every sandbox by an empty tmpfs."""

_SHADOWED = ("/dev", "/proc", "/tmp", "/run", WORK_PARENT)
"""Host paths a sandbox does not see (fresh mounts lie over them)."""

_PROBE_TIMEOUT = 30.0


class Sandbox:
    """The bubblewrap options of one instance, and the work directories of its commands.

    It holds a work root (and a lock on it) until `close`, or, once `retire`d (a caller's
    sandbox after the callers file was re-read), until its last command has left: a
    command still running keeps its work directory, and a request that took the old
    caller just before the reload still gets a root (a new one, let go when it leaves).
    """

    def __init__(self, bwrap: str, options: Sequence[str], work_root: str,
                 visible: Sequence[str] = (), owner: tuple[int, int] | None = None,
                 lock: int = -1) -> None:
        self.bwrap = bwrap
        self.options = tuple(options)
        self.work_root = work_root
        self.visible = tuple(visible)
        self.owner = owner
        self._lock = lock
        self._names = itertools.count(1)
        self._inside = 0  # commands between enter and leave
        self._retired = False
        # Trees left behind are removed off the event loop: a command that leaves a million
        # files must not stall every other request while they go.
        self._remover: ThreadPoolExecutor | None = None

    def check(self, path: str, what: str, program: str) -> None:
        """`SpawnError` if the host path ``path`` (a program or a ``cwd``) is not the same
        inside the sandbox: under ``/tmp``, ``/dev``, ... and not re-bound by a flag."""
        if not sees(path, _SHADOWED, self.visible):
            raise SpawnError(f"cannot start {program!r}: {what} {path!r} is not visible inside "
                             "the sandbox (bind it with --sandbox-bind-ro or --sandbox-bind)")

    def enter(self, cwd: str | None) -> tuple[list[str], str]:
        """A new work directory, and the prefix that runs a command in the sandbox there
        (or in ``cwd``). Raise OSError if the directory cannot be made."""
        if self._lock < 0:  # let go after a retirement: a late command takes a new root
            self.work_root, self._lock = _make_work_root()
        work = os.path.join(self.work_root, str(next(self._names)))
        os.mkdir(work, 0o700)
        if self.owner is not None:
            try:
                os.chown(work, *self.owner)
            except OSError:
                os.rmdir(work)
                raise
        self._inside += 1
        # The root is bound along the way to each work directory: --user must traverse it.
        return [self.bwrap, *self.options, "--perms", "0711", "--dir", self.work_root,
                "--bind", work, work,
                "--remount-ro", WORK_PARENT, "--chdir", cwd or work, "--"], work

    def leave(self, work: str) -> None:
        """Remove a command's work directory and all it left there."""
        self._inside -= 1
        try:
            os.rmdir(work)  # the common case: nothing left behind, no tree walk
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                if self._remover is None:
                    # Here, not at the top: an instance whose commands leave nothing behind
                    # (or that has no sandbox) never loads the thread pool.
                    from concurrent.futures import ThreadPoolExecutor

                    self._remover = ThreadPoolExecutor(1, thread_name_prefix="sandbox-remove")
                self._remover.submit(_remove_tree, work)
        if self._retired and self._inside == 0:
            self._let_go(wait=False)

    def retire(self) -> None:
        """No new caller will use this sandbox: remove its work root and let its lock go
        as soon as no command is inside (now, if none is), without blocking."""
        self._retired = True
        if self._inside == 0:
            self._let_go(wait=False)

    def close(self) -> None:
        """Finish the removals under way and remove the work root (call when no command
        runs any more)."""
        self._retired = True
        self._let_go(wait=True)

    @property
    def held(self) -> bool:
        """Whether it holds a work root now."""
        return self._lock >= 0

    def _let_go(self, wait: bool) -> None:
        root, lock, remover = self.work_root, self._lock, self._remover
        self._remover = None
        if lock < 0:
            if remover is not None:
                remover.shutdown(wait=wait)
            return
        self._lock = -1
        if remover is None:
            _drop_root(root, lock)
        elif wait:
            remover.shutdown(wait=True)
            _drop_root(root, lock)
        else:  # after the trees being removed, off the event loop
            remover.submit(_drop_root, root, lock)
            remover.shutdown(wait=False)


def _drop_root(root: str, lock: int) -> None:
    _remove_tree(root)
    os.close(lock)


def sees(path: str, shadowed: Sequence[str], visible: Sequence[str]) -> bool:
    """Whether ``path`` reaches the host's file through the sandbox's mounts: the deepest
    mount point above it is the root or a bind, not a fresh mount."""
    def depth(points: Sequence[str]) -> int:
        return max((len(p) for p in points if path == p or path.startswith(p.rstrip("/") + "/")),
                   default=-1)
    return depth(visible) >= depth(shadowed)


def sandbox_from_config(config: Config, environ: Mapping[str, str],
                        owner: tuple[int, int] | None = None) -> Sandbox:
    """The sandbox ``config`` asks for, tried once; `StartupError` if bubblewrap is missing
    or does not work here. ``owner`` (uid, gid) owns the work directories (``--user``)."""
    bwrap = shutil.which("bwrap", path=environ.get("PATH", os.defpath))
    if bwrap is None:
        raise StartupError("--sandbox needs bubblewrap (bwrap, Debian's package 'bubblewrap'), "
                           "which is not on PATH")
    bwrap = os.path.realpath(bwrap)
    binds: list[str] = []
    for flag, option, paths in (("--sandbox-bind-ro", "--ro-bind", config.sandbox_bind_ro),
                                ("--sandbox-bind", "--bind", config.sandbox_bind)):
        for path in paths:
            if not os.path.exists(path):
                raise StartupError(f"{flag} {path!r}: No such file or directory")
            binds += [option, path, path]
    tmp_size = str(config.sandbox_tmp_size * MIB)
    options = [
        "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        *([] if config.sandbox_net else ["--unshare-net"]),
        "--hostname", "sandbox", "--die-with-parent",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--perms", "1777", "--size", tmp_size, "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",
        "--proc", "/proc",
        "--perms", "1777", "--size", tmp_size, "--tmpfs", "/tmp",
        "--tmpfs", "/run", "--remount-ro", "/run",
        "--tmpfs", WORK_PARENT,
        *binds,
    ]
    if os.geteuid() == 0:
        # As root bubblewrap keeps every capability unless told; the command must not be
        # able to remount the root read-write. setpriv (--user) needs the first two to
        # drop, bubblewrap the third to enter the user's private work directory; the uid
        # change clears all three before the command runs.
        options += ["--cap-drop", "ALL"]
        if owner is not None:
            options += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                        "--cap-add", "CAP_DAC_READ_SEARCH"]
    try:
        sweep_stale_roots()
        root, lock = _make_work_root()
    except OSError as exc:
        raise StartupError(f"--sandbox: cannot make a work root in {WORK_PARENT}: "
                           f"{exc.strerror or exc}") from None
    sandbox = Sandbox(bwrap, options, root,
                      visible=[p for p in (*config.sandbox_bind_ro, *config.sandbox_bind)],
                      owner=owner, lock=lock)
    try:
        _probe(sandbox, environ)
    except BaseException:
        sandbox.close()
        raise
    return sandbox


_ROOT_PREFIX = "taskrunner-sandbox-"
_NEW_PREFIX = ".taskrunner-new-"


def _make_work_root() -> tuple[str, int]:
    """A private work root and an fd holding a lock on it for as long as the instance
    lives: an instance killed with ``kill -9`` cannot remove its root, so the next one
    removes every root whose lock nobody holds (`sweep_stale_roots`)."""
    made = tempfile.mkdtemp(prefix=_NEW_PREFIX, dir=WORK_PARENT)
    lock = os.open(made, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(lock, fcntl.LOCK_EX)
    # Named for the sweep only once locked, so that no sweep takes a root being made.
    root = os.path.join(WORK_PARENT,
                        _ROOT_PREFIX + os.path.basename(made).removeprefix(_NEW_PREFIX))
    os.rename(made, root)
    os.chmod(root, 0o711)
    return root, lock


def sweep_stale_roots() -> None:
    """Remove the work roots no live instance holds (root removes anyone's, another user
    its own)."""
    me = os.geteuid()
    with os.scandir(WORK_PARENT) as entries:
        stale = [entry.path for entry in entries if entry.name.startswith(_ROOT_PREFIX)
                 and entry.is_dir(follow_symlinks=False)
                 and me in (0, entry.stat(follow_symlinks=False).st_uid)]
    for path in stale:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live instance's
        finally:
            os.close(fd)
        log.info("--sandbox: removing %s, left by an instance that did not shut down", path)
        _remove_tree(path)


def _probe(sandbox: Sandbox, environ: Mapping[str, str]) -> None:
    true = shutil.which("true", path=environ.get("PATH", os.defpath)) or "/bin/true"
    prefix, work = sandbox.enter(None)
    try:
        proc = subprocess.run([*prefix, os.path.realpath(true)],
                              env={"PATH": environ.get("PATH", os.defpath)},
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=_PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StartupError(f"--sandbox: bubblewrap does not work here: {exc}") from None
    finally:
        sandbox.leave(work)
    if proc.returncode != 0:
        reason = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise StartupError("--sandbox: bubblewrap does not work here, refusing to run "
                           f"commands unsandboxed: {reason[-1] if reason else proc.returncode}")


def _remove_tree(path: str, depth: int = 0) -> None:
    def unlock(function: object, name: str, exc_info: tuple[type, BaseException, object]) -> None:
        exc = exc_info[1]
        if isinstance(exc, FileNotFoundError):
            return
        # A command may have left directories without read, write or search permission
        # (an instance that is not root has no capability to override them): open them up,
        # never through a symlink, and remove what is there.
        if isinstance(exc, PermissionError) and depth < _MAX_DEPTH:
            _searchable(os.path.dirname(name))
            is_dir = _searchable(name)
            try:
                if is_dir:
                    _remove_tree(name, depth + 1)
                else:
                    os.unlink(name)
                return
            except FileNotFoundError:
                return
            except OSError as again:
                exc = again
        log.warning("cannot remove %s from a sandbox's work directory: %s", name, exc)

    shutil.rmtree(path, onerror=unlock)


_MAX_DEPTH = 64


def _searchable(path: str) -> bool:
    """Give the owner every permission on the directory ``path`` (not on what a symlink
    there names); whether it is a directory."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        os.chmod(path, 0o700)
    except OSError:
        return False
    return True
