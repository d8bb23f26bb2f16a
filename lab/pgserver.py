"""A throwaway PostgreSQL server for the tests and for scripts/cluster: Debian's own
programs (package ``postgresql``, see scripts/install), a data directory of its own, run
by an unprivileged user, stopped and removed by whoever started it.

    python -m lab.pgserver start DIR [--port 55432] [--listen 127.0.0.1,10.77.0.1]
                                          [--allow 10.77.0.0/16]
    python -m lab.pgserver stop DIR [--immediate]
    python -m lab.pgserver url DIR

``start`` creates ``DIR/data`` on first use (initdb) with two roles: the superuser
``postgres``, who logs in only on the server's Unix socket (in DIR, ``trust``; the socket
is mode 0700: only the server's user and root reach it), and
``taskrunner``, not a superuser, unable to create databases or roles, owner of the database
``taskrunner`` only, who logs in with a password (scram-sha-256) over TCP from loopback and
from the networks of ``--allow`` (a cluster's hosts; pg_hba.conf is rewritten at every
start). Its password is made at creation and kept in files only their owner reads:
``DIR/password``, ``DIR/pgpass`` (a PGPASSFILE) and ``DIR/state-url`` (the whole URL, what
``--state-url-file`` takes). ``start`` then starts the server with pg_ctl and prints its URL,
which carries no password.
``stop`` stops it (``--immediate``: at once, as a crash would). DIR's parents must be
traversable by the server's user: as root that is ``postgres`` (or ``nobody``), and
pytest's own temporary directories (mode 0700) are not, so callers make DIR under /tmp.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass

USER = "taskrunner"
ADMIN = "postgres"
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
        """The URL an instance's ``--state-url`` takes (on the first listen address), without
        the password (libpq reads it from `pgpass` when PGPASSFILE names it)."""
        host = self.listen.split(",")[0]
        return f"postgresql://{USER}@{host}:{self.port}/{DATABASE}"

    @property
    def password(self) -> str:
        """The password of the role ``taskrunner`` (made on first start)."""
        with open(os.path.join(self.directory, "password")) as file:
            return file.read().strip()

    @property
    def pgpass(self) -> str:
        """A password file for libpq (PGPASSFILE), mode 0600."""
        return os.path.join(self.directory, "pgpass")

    @property
    def url_file(self) -> str:
        """A file holding the URL with the password, mode 0600: an instance's
        ``--state-url-file``."""
        return os.path.join(self.directory, "state-url")

    def url_with_password(self, database: str = DATABASE) -> str:
        """The URL of ``database`` with the password in it: never for a command line."""
        host = self.listen.split(",")[0]
        return f"postgresql://{USER}:{self.password}@{host}:{self.port}/{database}"

    @property
    def admin(self) -> str:
        """The superuser's connection string, over the server's Unix socket."""
        return f"host={self.directory} port={self.port} user={ADMIN} dbname=postgres"

    def sql(self, statements: str) -> None:
        """Run ``statements`` as the superuser (psql, on the Unix socket, from stdin)."""
        self._run(_account(), os.path.join(_bindir(), "psql"), "-X", "-q",
                  "-v", "ON_ERROR_STOP=1", "-d", self.admin, "-f", "-", stdin=statements)

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
                     f"-c unix_socket_directories='{self.directory}' "
                     # Only the server's own user (and root) may reach the socket.
                     "-c unix_socket_permissions=0700 -c max_connections=300")
        marker = os.path.join(self.directory, "created")
        if not os.path.exists(marker):
            self._create_role()
            with open(marker, "w"):
                pass
        return self.url

    def _create_role(self) -> None:
        # The password travels on psql's stdin, never in an argument list.
        password = secrets.token_urlsafe(24)  # letters, digits, - and _: safe in SQL
        self.sql(f"CREATE ROLE {USER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                 f"NOREPLICATION PASSWORD '{password}';\n"
                 f"CREATE DATABASE {DATABASE} OWNER {USER};\n"
                 f"REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC;\n"
                 f"REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC;\n")
        _private(os.path.join(self.directory, "password"), password + "\n")
        _private(self.pgpass, f"*:*:*:{USER}:{password}\n")
        _private(self.url_file, self.url_with_password() + "\n")

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
        # The whole file, rewritten at every start: trust for the superuser on the Unix
        # socket only; the role's password over TCP, from loopback and --allow's networks.
        nets = ["127.0.0.1/32", "::1/128",
                *(net.strip() for net in self.allow.split(",") if net.strip())]
        lines = [f"local all {ADMIN} trust",
                 *(f"host all {USER} {net} scram-sha-256" for net in nets)]
        path = os.path.join(self.data, "pg_hba.conf")
        with open(path, "w") as file:  # an existing file: its owner and mode stay
            file.write("# Written by lab/pgserver.py at every start.\n"
                       + "".join(f"{line}\n" for line in lines))

    def _initdb(self, account: pwd.struct_passwd | None) -> None:
        os.makedirs(self.data, mode=0o700, exist_ok=True)
        if account is not None:
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            os.chown(self.data, account.pw_uid, account.pw_gid)
        self._run(account, os.path.join(_bindir(), "initdb"), "-D", self.data, "-U", ADMIN,
                  "--auth-local=trust", "--auth-host=reject", "--encoding=UTF8",
                  "--locale=C.UTF-8", "--no-sync")

    def _pg_ctl(self, account: pwd.struct_passwd | None, *args: str) -> None:
        self._run(account, os.path.join(_bindir(), "pg_ctl"), "-D", self.data, *args)

    def _run(self, account: pwd.struct_passwd | None, *command: str,
             stdin: str | None = None) -> None:
        prefix = [] if account is None else [
            "setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
            "--init-groups", "--"]
        result = subprocess.run([*prefix, *command], capture_output=True, text=True,
                                input=stdin if stdin is not None else "", cwd="/",
                                check=False)
        if result.returncode != 0:
            log = os.path.join(self.directory, "postgres.log")
            tail = ""
            if os.path.exists(log):
                with open(log) as file:
                    tail = file.read()[-2000:]
            raise RuntimeError(f"{os.path.basename(command[0])} failed "
                               f"({result.returncode}): {result.stderr.strip()}\n{tail}")


def _private(path: str, text: str) -> None:
    # Made 0600 from the start: the password is never in a file others could read.
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        file.write(text)


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
