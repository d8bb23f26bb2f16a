"""Spawns per second of /bin/true (piped stdout/stderr, own session) under each containment
option: plain (vfork path), a preexec_fn, Popen(user=...), and exec wrappers.

Usage: python3 scripts/bench_spawn_wrappers.py [N]   (run as root for the --user variants)
"""

from __future__ import annotations

import os
import pwd
import resource
import subprocess
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
TRUE = "/bin/true"
nobody = pwd.getpwnam("nobody")


def spawn(argv: list[str], **kwargs: object) -> None:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                         close_fds=True, start_new_session=True, **kwargs)  # type: ignore[call-overload]
    os.close(out_w)
    os.close(err_w)
    while os.read(out_r, 65536):
        pass
    while os.read(err_r, 65536):
        pass
    os.close(out_r)
    os.close(err_r)
    p.wait()
    assert p.returncode == 0, (argv, p.returncode)


def limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def limits_and_user() -> None:
    limits()
    os.initgroups("nobody", nobody.pw_gid)
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


PRLIMIT = ["prlimit", f"--as={1 << 30}", "--nofile=256", "--"]
# As taskrunner.limits builds it: numeric ids, the group list resolved once.
GROUPS = ",".join(map(str, os.getgrouplist("nobody", nobody.pw_gid)))
SETPRIV = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
           f"--groups={GROUPS}", "--"]

variants: list[tuple[str, list[str], dict[str, object]]] = [
    ("plain (vfork)", [TRUE], {}),
    ("preexec_fn: setrlimit", [TRUE], {"preexec_fn": limits}),
    ("prlimit wrapper", [*PRLIMIT, TRUE], {}),
]
if os.geteuid() == 0:
    variants += [
        ("Popen(user=, group=, extra_groups=)", [TRUE],
         {"user": nobody.pw_uid, "group": nobody.pw_gid,
          "extra_groups": os.getgrouplist("nobody", nobody.pw_gid)}),
        ("preexec_fn: setrlimit + setuid", [TRUE], {"preexec_fn": limits_and_user}),
        ("setpriv wrapper", [*SETPRIV, TRUE], {}),
        ("prlimit + setpriv wrappers", [*PRLIMIT, *SETPRIV, TRUE], {}),
    ]

ballast = bytearray(30 << 20)  # a parent of realistic size: fork cost grows with it
for name, argv, kwargs in variants:
    for _ in range(20):
        spawn(argv, **kwargs)
    t0 = time.perf_counter()
    for _ in range(N):
        spawn(argv, **kwargs)
    rate = N / (time.perf_counter() - t0)
    print(f"{name:40s} {rate:8.0f} spawns/s")
