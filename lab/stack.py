"""The local stack, behind scripts/stack: four taskrunner instances under supervisord, nginx
in front of them.

    scripts/stack up       start supervisord (4 instances) and nginx; wait until all are
                           healthy; exit 0 (or 1, having stopped what it started)
    scripts/stack down     stop the instances (each drains: its commands in flight finish,
                           up to --grace), then nginx; whatever state the stack is in
                           (supervisord killed, stale pid files), what it started is
                           found by what it is (lab/procs.py), never by pid alone
    scripts/stack status   show each part; exit 0 only if all are up
    scripts/stack reload   rolling restart: SIGHUP makes each instance recycle in turn
                           (drain, exit 0, restarted by supervisord) without losing requests

The settings, from flags and the environment, are `lab.stack_settings`'s.

Both configs come from the operators' renderer (`taskrunner.deploy`): supervisord's is the
repository's supervisord.conf with the run directory's paths, nginx's the one the
cluster's front is made from.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import pwd
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import replace

from lab import procs
from lab.stack_settings import (
    NGINX_MALLOC,
    REPO,
    Settings,
    StackError,
    claim_run_dir,
    parse,
    stack_environment,
)
from taskrunner.deploy import nginx, supervisord
from taskrunner.deploy.settings import Settings as RenderSettings

COMMANDS = ("up", "down", "status", "reload")
USAGE = "usage: scripts/stack up|down|status|reload [--port N] [--base-port N] [--run-dir DIR]"
INSTANCES_HEALTHY = 30.0
"""Seconds for the four instances to answer /healthz after supervisord starts."""
FRONT_HEALTHY = 10.0
"""Seconds for nginx to answer /healthz after it starts."""


class Stack:
    """The stack of one run directory: its processes, found by what they are
    (`lab.procs`), and the four commands."""

    def __init__(self, settings: Settings, env: dict[str, str]) -> None:
        self.settings = settings
        self.run_dir = settings.run_dir
        self.env = env

    def running(self, role: str) -> int | None:
        """The pid of this stack's supervisord or nginx, if it runs."""
        found = procs.find(self.run_dir, self.settings.port)[role]
        return found[0].pid if found else None

    def ctl(self, *args: str, out: int | None = None) -> subprocess.CompletedProcess[str]:
        """supervisorctl of this stack; its output captured, unless ``out`` takes it."""
        return subprocess.run(
            [self.settings.python, "-m", "supervisor.supervisorctl", "-c",
             os.path.join(self.run_dir, "supervisord.conf"), *args],
            env=self.env, text=True, check=False,
            stdout=subprocess.PIPE if out is None else out)

    def up(self) -> int:
        s = self.settings
        found = procs.find(self.run_dir, s.port)
        if any(found.values()):
            lines = [f"  {role} {p.pid}" for role, ps in found.items() for p in ps]
            raise StackError("\n".join([f"already running (run dir {self.run_dir}); "
                                        "'scripts/stack down' first", *lines]))
        if not os.access(s.nginx, os.X_OK):
            raise StackError("nginx not found; run scripts/install")
        busy = [str(port) for port in [s.port, *s.ports] if not _bindable(port)]
        if busy:
            raise StackError(f"port(s) {', '.join(busy)} already in use")
        for sub in ("log", "nginx/client_body", "nginx/proxy", "nginx/fastcgi", "nginx/uwsgi",
                    "nginx/scgi"):
            os.makedirs(os.path.join(self.run_dir, sub), exist_ok=True)
        if os.geteuid() == 0:  # nginx's workers run as nobody and write their temp files
            _chown_tree(os.path.join(self.run_dir, "nginx"), pwd.getpwnam("nobody").pw_uid)
        os.chmod(os.path.join(self.run_dir, "log"), 0o700)  # 0755 from a checkout or before
        self.write_supervisord_conf()
        self.write_nginx_conf()
        started = subprocess.run([s.python, "-m", "supervisor.supervisord", "-c",
                                  os.path.join(self.run_dir, "supervisord.conf")],
                                 env=self.env, check=False)
        if started.returncode != 0:
            return started.returncode
        pending = wait_healthy(s.ports, INSTANCES_HEALTHY)
        if pending:
            _err(_not_healthy(INSTANCES_HEALTHY, pending))
            sys.stderr.flush()
            self.ctl("status", out=sys.stderr.fileno())
            for port in s.ports:
                _err(f"--- {self.run_dir}/log/taskrunner_{port}.log (end)", prefix="")
                _err("".join(_tail(os.path.join(self.run_dir, "log",
                                                f"taskrunner_{port}.log"), 5)), prefix="",
                     end="")
            return self.undo()
        # nginx starts once every instance listens: else it would mark them down
        # (fail_timeout).
        tunables = self.env.get("GLIBC_TUNABLES")
        env = {**self.env,
               "GLIBC_TUNABLES": NGINX_MALLOC + (f":{tunables}" if tunables else "")}
        if subprocess.run(self.nginx_command(), env=env, check=False).returncode != 0:
            return self.undo()
        pending = wait_healthy([s.port], FRONT_HEALTHY, front=(s.scheme, s.port))
        if pending:
            _err(_not_healthy(FRONT_HEALTHY, pending))
            return self.undo()
        _out(f"stack: up: nginx on {s.scheme}://127.0.0.1:{s.port}, instances on "
             f"{' '.join(map(str, s.ports))} (run dir {self.run_dir})")
        return 0

    def undo(self) -> int:
        """`down` after a failed `up`, saying what it does on stderr; 1."""
        with contextlib.redirect_stdout(sys.stderr):
            self.down()
        return 1

    def down(self) -> int:
        sys.stdout.flush()
        if procs.down(self.run_dir, self.settings.port) != 0:
            raise StackError(f"could not stop everything (run dir {self.run_dir})")
        for name in ("supervisord.pid", "nginx.pid", "supervisor.sock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.run_dir, name))
        _out(f"stack: down (run dir {self.run_dir})")
        return 0

    def status(self) -> int:
        s = self.settings
        ok = True
        pid = self.running("nginx")
        if pid is not None:
            _out(f"nginx:       running, pid {pid}, {s.scheme}://127.0.0.1:{s.port}")
        else:
            _out("nginx:       not running")
            ok = False
        pid = self.running("supervisord")
        if pid is not None:
            _out(f"supervisord: running, pid {pid}")
            # Not counted: an instance supervisord does not have running does not answer.
            for line in self.ctl("status").stdout.splitlines():
                _out(f"  {line}")
        else:
            _out("supervisord: not running")
            ok = False
        for port in s.ports:
            health = instance_health(port, self.env.get("TASKRUNNER_TOKEN", "").strip())
            _out(f"instance {port}: {health if health is not None else 'not answering'}")
            ok = ok and health is not None
        return 0 if ok else 1

    def reload(self) -> int:
        if self.running("supervisord") is None:
            raise StackError("not running")
        sys.stdout.flush()
        return self.ctl("signal", "HUP", "taskrunner:*", out=sys.stdout.fileno()).returncode

    def _render_settings(self) -> RenderSettings:
        s = self.settings
        return RenderSettings(run_dir=self.run_dir, port=s.port, base_port=s.base_port,
                              max_body=s.max_body, tls_cert=s.tls_cert, tls_key=s.tls_key,
                              directory=str(REPO))

    def write_supervisord_conf(self) -> None:
        """supervisord.conf from the renderer the repository's own comes from: the same
        program, with this run directory's paths; replaced at once."""
        path = os.path.join(self.run_dir, "supervisord.conf")
        _write(path + ".new", supervisord.stack_conf(self._render_settings()))
        os.replace(path + ".new", path)

    def write_nginx_conf(self) -> None:
        """nginx.conf from the renderer the cluster's front uses, replaced at once."""
        path = os.path.join(self.run_dir, "nginx.conf")
        _write(path + ".new", nginx.stack_conf(self._render_settings()))
        os.replace(path + ".new", path)

    def nginx_command(self) -> list[str]:
        """nginx with this stack's files."""
        return [self.settings.nginx, "-p", os.path.join(self.run_dir, "nginx"), "-e",
                os.path.join(self.run_dir, "log", "nginx-error.log"), "-c",
                os.path.join(self.run_dir, "nginx.conf")]


def wait_healthy(ports: list[int], timeout: float,
                 front: tuple[str, int] | None = None) -> list[int]:
    """Ask each port's GET /healthz until all answer 200 or ``timeout`` passes; the ports
    that did not. The ``front`` (scheme, port) is asked in its scheme: whether it is up,
    not who it is, so a certificate (made out to a public name) is not checked."""
    unchecked = ssl.create_default_context()
    unchecked.check_hostname, unchecked.verify_mode = False, ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending and time.monotonic() < deadline:
        for port in list(pending):
            scheme = front[0] if front and port == front[1] else "http"
            try:
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/healthz",
                                            timeout=1, context=unchecked) as answer:
                    if answer.status == 200:
                        pending.remove(port)
            except (OSError, http.client.HTTPException):
                pass
        if pending:
            time.sleep(0.1)
    return pending


def instance_health(port: int, token: str) -> str | None:
    """The instance's /healthz, asked with ``token`` if there is one (without a valid
    token, an instance that has one says its status only); None if it does not answer."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz",
                                     headers={"Authorization": f"Bearer {token}"}
                                     if token else {})
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            body: bytes = answer.read()
    except (OSError, http.client.HTTPException):
        return None
    return body.decode(errors="replace").rstrip("\n")


def _not_healthy(timeout: float, ports: list[int]) -> str:
    return f"not healthy after {timeout:g}s: port(s) {', '.join(map(str, ports))}"


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _chown_tree(top: str, uid: int) -> None:
    os.chown(top, uid, -1)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, -1, follow_symlinks=False)


def _tail(path: str, lines: int) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return f.readlines()[-lines:]
    except OSError:
        return []


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _out(line: str) -> None:
    print(line, flush=True)


def _err(line: str, prefix: str = "stack: ", end: str = "\n") -> None:
    print(prefix + line, end=end, file=sys.stderr, flush=True)


def main(argv: list[str], environ: Mapping[str, str] = os.environ) -> int:
    try:
        command, settings = parse(argv, environ)
        if command not in COMMANDS:
            _err(USAGE, prefix="")
            return 2
        os.makedirs(os.path.dirname(os.path.abspath(settings.run_dir)), exist_ok=True)
        os.umask(0o077)
        settings = replace(settings, run_dir=claim_run_dir(settings.run_dir))
        stack = Stack(settings, stack_environment(settings, environ))
        return {"up": stack.up, "down": stack.down, "status": stack.status,
                "reload": stack.reload}[command]()
    except StackError as exc:
        _err(str(exc))
        return exc.status
    except OSError as exc:
        _err(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
