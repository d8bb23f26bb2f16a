"""Spawns per second of /bin/true under each containment option: preexec_fn, Popen, wrappers.

/bin/true with piped stdout/stderr in a session of its own, N times per variant: plain
(vfork path), a preexec_fn, Popen(user=...), and exec wrappers (prlimit, setpriv). The
--user variants run as root only.
"""

from __future__ import annotations

import argparse
import functools
import os
import pwd
import resource
import subprocess
import time

from bench.timing import drain

TRUE = "/bin/true"


def spawn(argv: list[str], **kwargs: object) -> None:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                         close_fds=True, start_new_session=True, **kwargs)  # type: ignore[call-overload]
    os.close(out_w)
    os.close(err_w)
    drain(out_r, err_r)
    p.wait()
    assert p.returncode == 0, (argv, p.returncode)


def limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def limits_and_user(nobody: pwd.struct_passwd) -> None:
    limits()
    os.initgroups("nobody", nobody.pw_gid)
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


PRLIMIT = ["prlimit", f"--as={1 << 30}", "--nofile=256", "--"]


def variants() -> list[tuple[str, list[str], dict[str, object]]]:
    """Each variant: its name, its argv and Popen's keyword arguments."""
    found: list[tuple[str, list[str], dict[str, object]]] = [
        ("plain (vfork)", [TRUE], {}),
        ("preexec_fn: setrlimit", [TRUE], {"preexec_fn": limits}),
        ("prlimit wrapper", [*PRLIMIT, TRUE], {}),
    ]
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        # As taskrunner's containment builds it: numeric ids, the group list resolved once.
        groups = os.getgrouplist("nobody", nobody.pw_gid)
        setpriv = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                   f"--groups={','.join(map(str, groups))}", "--"]
        found += [
            ("Popen(user=, group=, extra_groups=)", [TRUE],
             {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": groups}),
            ("preexec_fn: setrlimit + setuid", [TRUE],
             {"preexec_fn": functools.partial(limits_and_user, nobody)}),
            ("setpriv wrapper", [*setpriv, TRUE], {}),
            ("prlimit + setpriv wrappers", [*PRLIMIT, *setpriv, TRUE], {}),
        ]
    return found


def main(argv: list[str]) -> int:
    """Spawn N times per variant (after 20 unrecorded); one line each."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment spawn_wrappers",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("n", nargs="?", type=int, default=1000, metavar="N",
                    help="spawns per variant")
    n = ap.parse_args(argv).n
    ballast = bytearray(30 << 20)  # a parent of realistic size: fork cost grows with it
    for name, cmd, kwargs in variants():
        for _ in range(20):
            spawn(cmd, **kwargs)
        t0 = time.perf_counter()
        for _ in range(n):
            spawn(cmd, **kwargs)
        rate = n / (time.perf_counter() - t0)
        print(f"{name:40s} {rate:8.0f} spawns/s")
    del ballast
    return 0
