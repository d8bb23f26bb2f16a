"""Run a command with one system call failing: ``python deny_syscall.py NR ERRNO -- ARGV...``.

A seccomp filter (inherited across exec and by every thread and child) makes system call
number NR return ERRNO without running; everything else is allowed. The tests use it to
reach error paths that are real but hard to provoke on demand, e.g. ``pidfd_open``
answering EMFILE after a child was spawned. x86-64 and arm64 only (the filter checks the
architecture and allows everything elsewhere); `supported` says whether it applies here.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

PIDFD_OPEN = 434  # the same number on every architecture (new system calls are unified)

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06


def supported() -> bool:
    return platform.machine() in _AUDIT_ARCH


def _install(nr: int, errno: int) -> None:
    arch = _AUDIT_ARCH[platform.machine()]
    program = [
        (_LD_W_ABS, 0, 0, 4),             # A = seccomp_data.arch
        (_JEQ_K, 0, 3, arch),             # another ABI: allow
        (_LD_W_ABS, 0, 0, 0),             # A = seccomp_data.nr
        (_JEQ_K, 0, 1, nr),
        (_RET_K, 0, 0, _RET_ERRNO | errno),
        (_RET_K, 0, 0, _RET_ALLOW),
    ]
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code, len(code))

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = Prog(len(program), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                           ctypes.c_ulong]
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0 or \
            libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl: cannot install the seccomp filter")


if __name__ == "__main__":
    nr, errno, separator, *argv = sys.argv[1:]
    assert separator == "--" and argv, __doc__
    _install(int(nr), int(errno))
    os.execvp(argv[0], argv)
