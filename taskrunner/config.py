"""The instance's configuration: one frozen dataclass, each setting with its default and help.

The CLI builds a `Config` from the command line (see `taskrunner.cli`); everything else
receives it explicitly. Each field's ``metadata["help"]`` is the text of its ``--flag``, so
the flag table in the README, ``--help`` and this file cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any


def _setting(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


MIB = 1024 * 1024
EVENT_LOOPS = ("uvloop", "asyncio")


@dataclass(frozen=True)
class Config:
    """Every setting of one taskrunner instance."""

    address: str = _setting("127.0.0.1", "address to listen on")
    port: int = _setting(8885, "TCP port to listen on")
    default_timeout: float = _setting(
        30.0, "seconds a command may run when the request names no timeout"
    )
    max_timeout: float = _setting(3600.0, "largest timeout a request may ask for, in seconds")
    max_output: int = _setting(
        MIB, "bytes of stdout and of stderr kept per command; the rest is drained and dropped"
    )
    max_body: int = _setting(MIB, "largest request body in bytes; larger bodies get a 413")
    grace: float = _setting(
        10.0,
        "on SIGTERM/SIGINT, seconds running commands may still finish before they are killed",
    )
    instance: str = _setting(
        "", "name of this instance, carried in job ids; default: the port number"
    )
    job_ttl: float = _setting(3600.0, "seconds a finished job is kept")
    max_jobs: int = _setting(1000, "most jobs kept; the oldest finished ones are dropped first")
    state_dir: str = _setting(
        "", "directory of the SQLite job store; empty: jobs live in memory only"
    )
    max_requests: int = _setting(
        0, "after this many requests, stop accepting, drain and exit 0 so a supervisor starts "
        "a fresh process (0: never)"
    )
    recycle_lock: str = _setting(
        "", "file shared by the instances of one deployment so that only one of them "
        "recycles (--max-requests) at a time ('': no coordination)"
    )
    log_format: str = _setting("text", "log line format: text or json")
    event_loop: str = _setting(
        "uvloop", "event loop under Tornado: uvloop (libuv; less work per request, see the "
        "README's benchmark) or asyncio (the standard library's)"
    )

    # -- security and containment (see the README, "Security model") ------------------
    token_file: str = _setting(
        "", "file holding the bearer token every route but GET /healthz requires "
        "(or set TASKRUNNER_TOKEN); empty: no token"
    )
    allow: tuple[str, ...] = _setting(
        (), "a program that may run (repeatable); resolved through PATH to its real path. "
        "None given: any program may run", repeatable=True
    )
    user: str = _setting("", "when running as root, run commands as this user (uid, gid, "
                         "supplementary groups)")
    limit_as: int = _setting(0, "address-space limit of each command in MiB; 0: none")
    limit_cpu: int = _setting(0, "CPU-time limit of each command in seconds; 0: none")
    limit_nproc: int = _setting(
        0, "process limit (RLIMIT_NPROC, counted per user) of each command; 0: none"
    )
    limit_fsize: int = _setting(0, "largest file each command may write, in MiB; 0: none")
    limit_nofile: int = _setting(0, "open-file limit of each command; 0: none")
    max_running: int = _setting(
        0, "commands running at once (/run and jobs together); 0: auto, "
        "min(256 x CPUs, (open-file limit - 256) / 4)"
    )
    max_queued: int = _setting(
        -1, "requests that may wait for a free slot, beyond which 429; -1: 2 x max-running"
    )
    max_connections: int = _setting(
        0, "client connections held at once; at the cap a new one replaces the connection "
        "idle longest, and while all are busy new ones wait in the listen backlog. 0: auto, "
        "open-file limit - 64 - 4 x max-running (at least 16)"
    )
    idle_timeout: float = _setting(
        60.0, "seconds a connection may sit idle, or take to send its request headers"
    )
    body_timeout: float = _setting(60.0, "seconds a client may take to send a request body")

    # -- the sandbox (see docs/security.md, "The sandbox") ------------------------------
    sandbox: bool = _setting(
        False, "run every command under bubblewrap: new PID, mount, IPC, UTS and network "
        "namespaces, the root read-only, a private /tmp, a work directory of its own"
    )
    sandbox_tmp_size: int = _setting(
        64, "size of a sandbox's private /tmp, and of its /dev/shm, in MiB each"
    )
    sandbox_bind_ro: tuple[str, ...] = _setting(
        (), "a host path a sandbox sees read-only at the same place over what hides it "
        "(repeatable)", repeatable=True
    )
    sandbox_bind: tuple[str, ...] = _setting(
        (), "a host path a sandbox may write, at the same place (repeatable)", repeatable=True
    )
    sandbox_net: bool = _setting(
        False, "let sandboxed commands use the host's network (default: none but their own "
        "loopback)"
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        for name in ("default_timeout", "max_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.default_timeout > self.max_timeout:
            raise ValueError("default_timeout must not exceed max_timeout")
        for name in ("max_output", "max_body"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.grace < 0:
            raise ValueError("grace must be >= 0")
        for name in ("limit_as", "limit_cpu", "limit_nproc", "limit_fsize", "limit_nofile",
                     "max_running", "max_connections"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_queued < -1:
            raise ValueError("max_queued must be >= 0, or -1 for 2 x max_running")
        for name in ("idle_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.sandbox_tmp_size < 1:
            raise ValueError("sandbox_tmp_size must be >= 1")
        for path in (*self.sandbox_bind_ro, *self.sandbox_bind):
            if not path.startswith("/") or path == "/" or os.path.normpath(path) != path:
                raise ValueError(f"a sandbox bind must be a normalised absolute path other "
                                 f"than /, not {path!r}")
        if not self.sandbox and (self.sandbox_net or self.sandbox_bind_ro or self.sandbox_bind):
            raise ValueError("sandbox_net, sandbox_bind and sandbox_bind_ro need sandbox")
        # Job ids are "<instance>.<random>" and a proxy routes on the part before the dot.
        if not re.fullmatch(r"[A-Za-z0-9_-]*", self.instance):
            raise ValueError("instance may only use letters, digits, '-' and '_'")
        if not self.job_ttl > 0:
            raise ValueError("job_ttl must be > 0")
        if self.max_jobs < 1:
            raise ValueError("max_jobs must be >= 1")
        if self.max_requests < 0:
            raise ValueError("max_requests must be >= 0")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"event_loop must be uvloop or asyncio, not {self.event_loop!r}")


def settings() -> list[dataclasses.Field[Any]]:
    """The fields of `Config`, in declaration order."""
    return list(dataclasses.fields(Config))
