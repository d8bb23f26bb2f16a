"""A throwaway PostgreSQL server for the tests and for scripts/cluster: Debian's own
programs (package ``postgresql``, see scripts/install), a data directory of its own, run
by an unprivileged user, stopped and removed by whoever started it.

    python3 scripts/pgserver.py start DIR [--port 55432] [--listen 127.0.0.1,10.77.0.1]
                                          [--allow 10.77.0.0/16]
    python3 scripts/pgserver.py stop DIR [--immediate]
    python3 scripts/pgserver.py url DIR

``start`` creates ``DIR/data`` on first use (initdb; a superuser ``taskrunner`` and a
database ``taskrunner``; password-less ``trust`` logins, which is only fit for a server on
addresses of its own machine, as here), starts the server with pg_ctl and prints its URL.
Clients connect from loopback, and from the networks of ``--allow`` (a cluster's hosts:
pg_hba.conf is given a line for each, rewritten at every start).
``stop`` stops it (``--immediate``: at once, as a crash would). DIR's parents must be
traversable by the server's user: as root that is ``postgres`` (or ``nobody``), and
pytest's own temporary directories (mode 0700) are not, so callers make DIR under /tmp.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass

USER = "taskrunner"
_ALLOW_MARK = "# Below: the networks of scripts/pgserver.py --allow.\n"
DATABASE = "taskrunner"


def _bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda path: int(path.split("/")[4]))
    if not found:
        raise SystemExit("pgserver: PostgreSQL's programs are not installed (apt-get install "
                         "postgresql; scripts/install does it)")
    return os.path.dirname(found[-1])


@dataclass
class PgServer:
    """One PostgreSQL server in ``directory`` on ``port``, listening on ``listen``."""

    directory: str
    port: int = 55432
    listen: str = "127.0.0.1"
    allow: str = ""
    """Networks (CIDR, comma-separated) that may connect besides loopback."""

    @property
    def data(self) -> str:
        return os.path.join(self.directory, "data")

    @property
    def url(self) -> str:
        """The URL an instance's ``--state-url`` takes (on the first listen address)."""
        host = self.listen.split(",")[0]
        return f"postgresql://{USER}@{host}:{self.port}/{DATABASE}"

    def start(self, timeout: float = 60.0) -> str:
        """Create the server on first use and start it; return its URL."""
        os.makedirs(self.directory, exist_ok=True)
        account = _account()
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            self._initdb(account)
        self._allow()
        self._pg_ctl(account, "start", "-w", "-t", str(int(timeout)),
                     "-l", os.path.join(self.directory, "postgres.log"), "-o",
                     f"-p {self.port} -c listen_addresses='{self.listen}' "
                     f"-c unix_socket_directories='{self.directory}' -c max_connections=300")
        marker = os.path.join(self.directory, "created")
        if not os.path.exists(marker):
            self._run(account, os.path.join(_bindir(), "createdb"), "-h", self.directory,
                      "-p", str(self.port), "-U", USER, DATABASE)
            with open(marker, "w"):
                pass
        return self.url

    def stop(self, immediate: bool = False) -> None:
        """Stop the server if it runs (``immediate``: no checkpoint, as a crash)."""
        if not os.path.exists(os.path.join(self.data, "postmaster.pid")):
            return
        self._pg_ctl(_account(), "stop", "-w", "-m", "immediate" if immediate else "fast")

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop(immediate=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _allow(self) -> None:
        path = os.path.join(self.data, "pg_hba.conf")
        with open(path) as file:
            kept = file.read().split(_ALLOW_MARK, 1)[0]
        lines = [f"host all all {net.strip()} trust" for net in self.allow.split(",")
                 if net.strip()]
        with open(path, "w") as file:  # an existing file: its owner and mode stay
            file.write(kept + _ALLOW_MARK + "".join(f"{line}\n" for line in lines))

    def _initdb(self, account: pwd.struct_passwd | None) -> None:
        os.makedirs(self.data, mode=0o700, exist_ok=True)
        if account is not None:
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            os.chown(self.data, account.pw_uid, account.pw_gid)
        self._run(account, os.path.join(_bindir(), "initdb"), "-D", self.data, "-U", USER,
                  "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")

    def _pg_ctl(self, account: pwd.struct_passwd | None, *args: str) -> None:
        self._run(account, os.path.join(_bindir(), "pg_ctl"), "-D", self.data, *args)

    def _run(self, account: pwd.struct_passwd | None, *command: str) -> None:
        prefix = [] if account is None else [
            "setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
            "--init-groups", "--"]
        result = subprocess.run([*prefix, *command], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, cwd="/", check=False)
        if result.returncode != 0:
            log = os.path.join(self.directory, "postgres.log")
            tail = ""
            if os.path.exists(log):
                with open(log) as file:
                    tail = file.read()[-2000:]
            raise RuntimeError(f"{os.path.basename(command[0])} failed "
                               f"({result.returncode}): {result.stderr.strip()}\n{tail}")


def _account() -> pwd.struct_passwd | None:
    # PostgreSQL refuses to run as root: as root, the server runs as postgres (or nobody).
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise SystemExit("pgserver: no unprivileged user (postgres, nobody) to run the server as")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pgserver", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "url"))
    parser.add_argument("directory")
    parser.add_argument("--port", type=int, default=55432)
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--allow", default="", help="networks that may connect (CIDR, ...)")
    parser.add_argument("--immediate", action="store_true")
    args = parser.parse_args(argv)
    server = PgServer(os.path.abspath(args.directory), args.port, args.listen, args.allow)
    try:
        if args.command == "start":
            print(server.start())
        elif args.command == "stop":
            server.stop(args.immediate)
        else:
            print(server.url)
    except RuntimeError as exc:
        print(f"pgserver: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
