"""The instance's configuration: one frozen dataclass, each setting with its default and help.

The CLI builds a `Config` from the command line (see `taskrunner.cli`); everything else
receives it explicitly. Each field's ``metadata["help"]`` is the text of its ``--flag``, so
the flag table in docs/flags.md, ``--help`` and this file cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


def _setting(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


def _limit(default: Any, help: str, **extra: Any) -> Any:
    # A setting a caller of --callers may override in its ``limits`` table.
    return _setting(default, help, per_caller=True, **extra)


MIB = 1024 * 1024
EVENT_LOOPS = ("uvloop", "asyncio")

TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])
"""The TLS 1.2 cipher suites an HTTPS instance, and the stack's and the cluster's nginx,
offer (one list: the instance's TLS context and taskrunner.deploy's nginx configs both
take it from here): Mozilla's "intermediate" list without DHE (forward secrecy from ECDHE,
AEAD only). No CBC suite: their MAC-then-encrypt construction is what padding-oracle
attacks (Lucky Thirteen) feed on. It does not touch TLS 1.3, whose suites OpenSSL sets
apart."""


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
        "", "name of this instance, carried in job ids; default: <host name>-<port> (the "
        "host name's characters other than letters, digits, '-' and '_' made '-')"
    )
    advertise_url: str = _setting(
        "", "http(s)://HOST:PORT where the instances sharing the job index reach this one, "
        "to forward it a request for one of its running jobs (it answers to HOST); default: "
        "the --address and the port bound, on a wildcard address the host's name (or, "
        "if that name is not this machine's, its primary address)"
    )
    peer_ca_file: str = _setting(
        "", "PEM file of the CAs that sign the certificates of https advertise URLs "
        "(its siblings'); empty: the system's CAs"
    )
    forward_timeout: float = _setting(
        5.0, "seconds a forward to a job's owner may take to connect and to start its "
        "answer; past it, 503 owner_unreachable"
    )
    job_ttl: float = _setting(3600.0, "seconds a finished job is kept")
    max_jobs: int = _setting(1000, "most jobs kept; the oldest finished ones are dropped first")
    state_dir: str = _setting(
        "", "directory of the SQLite job index, which the instances of one host may share "
        "(each with its own --instance); empty: jobs live in memory only"
    )
    state_url: str = _setting(
        "", "postgresql://USER@HOST[:PORT]/DATABASE: the job index in PostgreSQL, shared by "
        "the hosts of a cluster (instead of --state-dir); no password here (PGPASSFILE, or "
        "--state-url-file)"
    )
    state_url_file: str = _setting(
        "", "file (mode 0600) holding the --state-url, password included; read at start"
    )
    lost_after: float = _setting(
        15.0, "seconds without a heartbeat after which another instance's unfinished jobs "
        "are reported lost (with a shared index)"
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
        "uvloop", "event loop under Tornado: uvloop (libuv; less work per request, see "
        "docs/bench.md) or asyncio (the standard library's)"
    )

    # -- security and containment (see docs/security.md) --------------------------------
    token_file: str = _setting(
        "", "file holding the bearer token every route but the probes (/healthz, /livez, "
        "/readyz) requires "
        "(or set TASKRUNNER_TOKEN); empty: no token"
    )
    allowed_host: tuple[str, ...] = _setting(
        (), "a host name (or address) the instance answers to besides its own (repeatable); "
        "'*': any (unsafe: DNS rebinding)", repeatable=True
    )
    allowed_origin: tuple[str, ...] = _setting(
        (), "an origin (scheme://host[:port]) whose pages may POST and DELETE here "
        "(repeatable)", repeatable=True
    )
    allow: tuple[str, ...] = _setting(
        (), "a program that may run (repeatable); resolved through PATH to its real path. "
        "None given: any program may run", repeatable=True
    )
    pass_env: tuple[str, ...] = _setting(
        (), "an environment variable of the instance's that commands get too (repeatable); "
        "by default they get only PATH, LANG, LC_*, TZ and HOME", repeatable=True
    )
    user: str = _limit("", "when running as root, run commands as this user (uid, gid, "
                         "supplementary groups)")
    limit_as: int = _limit(0, "address-space limit of each command in MiB; 0: none")
    limit_cpu: int = _limit(0, "CPU-time limit of each command in seconds; 0: none")
    limit_nproc: int = _limit(
        0, "process limit (RLIMIT_NPROC, counted per user) of each command; 0: none"
    )
    limit_fsize: int = _limit(0, "largest file each command may write, in MiB; 0: none")
    limit_nofile: int = _limit(0, "open-file limit of each command; 0: none")
    callers: str = _setting(
        "", "TOML file naming the callers' realm and the callers: each with a token (as its "
        "SHA-256), scopes, its own --allow, max_running share and limits, every one written "
        "out; re-read on SIGHUP. Empty: one token (--token-file) or none"
    )
    actions: str = _setting(
        "", "TOML file of actions: named commands with typed parameters that callers with "
        "the actions scope may run (docs/actions.md); --allow does not apply to them; "
        "re-read on SIGHUP. Empty: no actions"
    )
    memory_max: int = _setting(
        0, "memory limit of each command's whole process tree, in MiB, by a cgroup of its "
        "own; a command it kills reports oom_killed. 0: none"
    )
    pids_max: int = _setting(
        0, "most processes and threads of each command's tree at once, by its cgroup "
        "(at least 2); 0: none"
    )
    cpu_max: float = _setting(
        0.0, "CPUs each command's tree may use (e.g. 0.5), by its cgroup; 0: none"
    )
    cgroup_parent: str = _setting(
        "", "cgroup path (e.g. /taskrunner, the same in every hierarchy) under which the "
        "commands' cgroups are made; empty: taskrunner-<pid> under the instance's own cgroup"
    )
    max_running: int = _setting(
        0, "commands running at once (/run and jobs together); 0: auto, "
        "min(256 x CPUs, (open-file limit - 256) / 4)"
    )
    max_queued: int = _setting(
        -1, "requests that may wait for a free slot, beyond which 429; -1: 2 x max-running"
    )
    max_connections: int = _setting(
        0, "client connections held at once; at the cap a new one replaces a stranger's "
        "(no valid token: first one whose refused body is arriving, then the one idle "
        "longest), a caller's idle one only while strangers hold under half the cap, and "
        "while all are busy new ones wait in the listen backlog. 0: auto, open-file limit - "
        "64 - 4 x max-running (at least 16)"
    )
    idle_timeout: float = _setting(
        60.0, "seconds a connection may sit idle, or take to send its request headers"
    )
    body_timeout: float = _setting(
        60.0, "seconds a client may take to send a request body; a body the instance will "
        "not use (refused, or to a route that takes none) gets at most 1 s and 64 KiB"
    )
    certfile: str = _setting(
        "", "PEM certificate (its chain after it) to serve HTTPS with, TLS 1.2 or later; "
        "empty: plain HTTP"
    )
    keyfile: str = _setting("", "PEM private key of --certfile; empty: the key is in --certfile")
    insecure_http: bool = _setting(
        False, "allow plain HTTP on a non-loopback --address, for a TLS proxy in front; "
        "without it protected mode refuses to start"
    )

    # -- completion callbacks (see docs/api.md#completion-callbacks) ----------------------
    callback_allow: tuple[str, ...] = _setting(
        (), "a host (HOST or HOST:PORT; without a port, the scheme's default) that a job's "
        "callback_url may name (repeatable). None given: no callbacks", repeatable=True
    )
    callback_secret_file: str = _setting(
        "", "file holding the secret that signs callbacks (HMAC-SHA256); required with "
        "--callback-allow"
    )

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
                     "max_running", "max_connections", "memory_max", "pids_max", "cpu_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not math.isfinite(self.cpu_max) or 0 < self.cpu_max < 0.01:
            # The kernel's smallest CFS quota is 1 ms of a 100 ms period.
            raise ValueError("cpu_max must be 0 or a finite number of CPUs >= 0.01")
        if self.pids_max == 1:
            # On cgroup v1 the spawning thread is counted while it is in the cgroup.
            raise ValueError("pids_max must be 0 or at least 2")
        if self.cgroup_parent and not self.cgroup_parent.startswith("/"):
            raise ValueError("cgroup_parent must be a cgroup path starting with /")
        if ".." in self.cgroup_parent.split("/"):
            raise ValueError("cgroup_parent must not contain ..")
        if self.max_queued < -1:
            raise ValueError("max_queued must be >= 0, or -1 for 2 x max_running")
        for name in ("idle_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.keyfile and not self.certfile:
            raise ValueError("keyfile needs certfile")
        if self.insecure_http and self.certfile:
            raise ValueError("insecure_http contradicts certfile: choose one")
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
        if self.advertise_url:
            _check_advertise_url(self.advertise_url)
        if not (math.isfinite(self.forward_timeout) and self.forward_timeout > 0):
            raise ValueError("forward_timeout must be > 0")
        if not self.job_ttl > 0:
            raise ValueError("job_ttl must be > 0")
        if self.state_url and self.state_dir:
            raise ValueError("state_url and state_dir are two job indexes: choose one")
        if self.state_url and not re.match(r"postgres(ql)?://", self.state_url):
            raise ValueError("state_url must be a postgresql:// URL")
        if _has_password(self.state_url):
            raise ValueError("state_url must not carry a password (any local user reads a "
                             "command line): use state_url_file, or PGPASSFILE")
        if self.state_url_file and (self.state_url or self.state_dir):
            raise ValueError("state_url_file holds the state_url: give one of state_url, "
                             "state_url_file and state_dir")
        if not (math.isfinite(self.lost_after) and self.lost_after >= 2):
            # Instances heartbeat every second: fewer than 2 would call a live one lost.
            raise ValueError("lost_after must be at least 2 seconds")
        if self.max_jobs < 1:
            raise ValueError("max_jobs must be >= 1")
        if self.max_requests < 0:
            raise ValueError("max_requests must be >= 0")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")
        for entry in self.callback_allow:
            _check_callback_host(entry)
        for name in self.allowed_host:
            if name != "*" and not re.fullmatch(r"[A-Za-z0-9._-]+|\[?[0-9A-Fa-f:.]+\]?", name):
                raise ValueError(f"allowed_host: {name!r} is not a host name or an address "
                                 "(no port: the port is not compared)")
        for origin in self.allowed_origin:
            if not re.fullmatch(r"https?://([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?",
                                origin):
                raise ValueError(f"allowed_origin: {origin!r} is not scheme://host[:port]")
        # An unsigned callback could be forged by anyone who reaches the receiver; a secret
        # without hosts would sign nothing, which is a mistake worth saying.
        if self.callback_allow and not self.callback_secret_file:
            raise ValueError("callback_allow needs callback_secret_file: callbacks are signed")
        if self.callback_secret_file and not self.callback_allow:
            raise ValueError("callback_secret_file has no effect without callback_allow")
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"event_loop must be uvloop or asyncio, not {self.event_loop!r}")


def _has_password(url: str) -> bool:
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return False  # not a URL psycopg would take either
    return password is not None or "password=" in parts.query


def _check_advertise_url(url: str) -> None:
    # scheme://host[:port] and nothing else: a forward appends the request's own path.
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is no number
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or parts.username is not None or parts.path not in ("", "/") or parts.query
            or parts.fragment or not url.isascii() or any(c.isspace() for c in url)):
        raise ValueError(f"advertise_url: {url!r} is not http(s)://HOST[:PORT]")
    if parts.hostname in ("0.0.0.0", "::"):
        raise ValueError(f"advertise_url: {url!r} names a wildcard address, where no sibling "
                         "can reach this instance")


def _check_callback_host(entry: str) -> None:
    # HOST or HOST:PORT ([v6]:PORT), nothing else: a scheme, a path or user info here would
    # be a list that never matches what the operator meant.
    try:
        parts = urlsplit(f"//{entry}")
        port = parts.port
    except ValueError:
        port, parts = None, None
    if (parts is None or not parts.hostname or parts.username is not None or parts.path
            or parts.query or parts.fragment or not entry.isascii() or port == 0
            or any(char.isspace() for char in entry)):
        raise ValueError(f"callback_allow: {entry!r} is not HOST or HOST:PORT")


def settings() -> list[dataclasses.Field[Any]]:
    """The fields of `Config`, in declaration order."""
    return list(dataclasses.fields(Config))


def per_caller_settings() -> dict[str, dataclasses.Field[Any]]:
    """The settings a caller of ``--callers`` may override (``user``, the limits), by name."""
    return {f.name: f for f in dataclasses.fields(Config) if f.metadata.get("per_caller")}
