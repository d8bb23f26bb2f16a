"""What the local stack runs with: its settings, from its flags and the environment, its
run directory (made, or checked before it is used), and how nginx is run.

The settings (environment, or the flags in brackets):

    TASKRUNNER_PORT       [--port]       nginx's port on 127.0.0.1             (8080)
    TASKRUNNER_BASE_PORT  [--base-port]  first instance port; 4 in a row      (8885)
    TASKRUNNER_RUN_DIR    [--run-dir]    pid files, sockets, logs, nginx conf (./run)
    TASKRUNNER_ARGS                      extra flags for every instance       (none)
    TASKRUNNER_STATE_DIR                 the job index all four share: their
                                         --state-dir (one jobs.sqlite3)  ($RUN_DIR/state)
    TASKRUNNER_MAX_BODY                  nginx's body limit, bytes; keep it equal to the
                                         instances' --max-body                 (1048576)
    TASKRUNNER_TLS_CERT                  nginx serves HTTPS with this PEM certificate
    TASKRUNNER_TLS_KEY                   (chain after it) and key; both or neither
    TASKRUNNER_TOKEN                     the instances' token (they inherit it); status
                                         sends it to read each instance's whole /healthz
                                         (with --callers: any caller's token, for status)
    PYTHON                               interpreter for supervisord and the instances
    NGINX                                the nginx binary (nginx on PATH, or /usr/sbin/nginx)
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from taskrunner.deploy import nginx, supervisord

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NGINX_MALLOC = nginx.MALLOC_TUNABLES
"""nginx's GLIBC_TUNABLES. glibc's malloc, by default, hands the top of the heap back to
the kernel as soon as 128 KiB of it are free, so an nginx worker returned its proxy buffers
after every large response and page-faulted them back in for the next: 0.8 ms of nginx CPU
per 1 MiB response, a third of it in page faults. Keeping up to 32 MiB of freed heap per
worker (and taking buffers up to 4 MiB from the heap, not from one mmap each) cut that to
0.5 ms (W3, stack). An operator's own GLIBC_TUNABLES come last and win."""


class StackError(Exception):
    """A one-line refusal or failure, printed as ``stack: ...``; ``status`` is the exit
    status (2: a mistake of the caller's)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Settings:
    """What the stack is told, from its flags and environment."""

    port: int
    base_port: int
    run_dir: str
    max_body: int
    tls_cert: str
    tls_key: str
    python: str
    nginx: str

    @property
    def ports(self) -> list[int]:
        """The instances' ports."""
        return [instance.port for instance in supervisord.stack_instances(self.base_port)]

    @property
    def scheme(self) -> str:
        """nginx's scheme: https when it has a certificate."""
        return "https" if self.tls_cert else "http"


def nginx_binary(environ: Mapping[str, str] = os.environ) -> str:
    """``$NGINX``, else nginx on PATH, else /usr/sbin/nginx."""
    return environ.get("NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"


def _number(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise StackError(f"{what}: not a number: {value!r}", 2) from None


def parse(argv: list[str], environ: Mapping[str, str]) -> tuple[str, Settings]:
    """The command (unchecked) and the settings (the run directory not yet checked nor
    resolved)."""
    command = argv[0] if argv else ""
    port = environ.get("TASKRUNNER_PORT") or "8080"
    base = environ.get("TASKRUNNER_BASE_PORT") or "8885"
    run_dir = environ.get("TASKRUNNER_RUN_DIR") or os.path.join(REPO, "run")
    rest = argv[1:]
    while rest:
        flag = rest.pop(0)
        if flag not in ("--port", "--base-port", "--run-dir"):
            raise StackError(f"unknown argument {flag}", 2)
        if not rest:
            raise StackError(f"{flag} needs a value", 2)
        value = rest.pop(0)
        if flag == "--port":
            port = value
        elif flag == "--base-port":
            base = value
        else:
            run_dir = value
    cert = environ.get("TASKRUNNER_TLS_CERT", "")
    key = environ.get("TASKRUNNER_TLS_KEY", "")
    if bool(cert) != bool(key):
        raise StackError("TASKRUNNER_TLS_CERT and TASKRUNNER_TLS_KEY go together: set both "
                         "or neither", 2)
    python = environ.get("PYTHON") or "python3"
    found = shutil.which(python)
    if not found:
        raise StackError(f"{python}: not found (set PYTHON, or put python3 on PATH)")
    return command, Settings(
        port=_number(port, "--port"), base_port=_number(base, "--base-port"),
        run_dir=run_dir,
        max_body=_number(environ.get("TASKRUNNER_MAX_BODY") or "1048576",
                         "TASKRUNNER_MAX_BODY"),
        tls_cert=cert, tls_key=key, python=os.path.abspath(found),
        nginx=nginx_binary(environ))


def claim_run_dir(path: str) -> str:
    """Make or check the run directory; its absolute path.

    It holds the job index, the logs (every command line), the configs and supervisord's
    socket: it is the stack's alone. Made 0700, and everything in it 0600 (the umask, set
    by `main` and inherited by supervisord, nginx and the instances); as root, 0711, so
    that nginx's workers (nobody) reach their temp directories, listing nothing. An
    existing one that others may write, or that is not the stack's (no log/ in it) and
    others may read, is refused: it may be shared, and is left as it is."""
    try:
        if not os.path.exists(path):
            os.mkdir(path, 0o700)
        info = os.stat(path)
    except OSError as exc:
        raise StackError(f"run directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StackError(f"run directory {path}: not a directory")
    if info.st_uid != os.geteuid():
        raise StackError(f"run directory {path} belongs to uid {info.st_uid}, not to this "
                         "user: give the stack a directory of its own (--run-dir)")
    mode = stat.S_IMODE(info.st_mode)
    # Anything but user bits and the 0711 traversal: writable by others, sticky, or
    # readable by others without being the stack's (one from a checkout or an earlier
    # version, with a log/, is tightened below).
    if mode & 0o7066 and (mode & 0o7022 or not os.path.isdir(os.path.join(path, "log"))):
        raise StackError(f"run directory {path} is readable or writable by others (mode "
                         f"{mode:o}): give the stack a directory of its own (--run-dir; a "
                         "missing one is made 0700)")
    path = os.path.abspath(path)
    os.chmod(path, 0o711 if os.geteuid() == 0 else 0o700)
    return path


def stack_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of supervisord and the instances (supervisord.conf reads it)."""
    return {**environ, "PYTHON": settings.python, "TASKRUNNER_RUN_DIR": settings.run_dir,
            "TASKRUNNER_ARGS": environ.get("TASKRUNNER_ARGS", ""),
            "TASKRUNNER_STATE_DIR": (environ.get("TASKRUNNER_STATE_DIR")
                                     or os.path.join(settings.run_dir, "state"))}
