"""CPU per command of the allowlist: resolving args[0] against --allow, by PATH length.

`Allowlist.check` for ``true`` with a 17-entry PATH whose last entry holds it (the others
empty directories), with a PATH of that one directory, and for its absolute path; the best
of ``--repeat`` timings, each of as many calls as fill 0.2 s.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile

from bench.timing import best
from taskrunner.process.allowlist import Allowlist


def main(argv: list[str]) -> int:
    """Time the three checks; one line each, in µs per call."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment allowlist",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("--repeat", type=int, default=5, help="timings; the best is shown")
    repeat = ap.parse_args(argv).repeat
    true = shutil.which("true")
    assert true is not None, "no true on PATH"
    home = os.path.dirname(true)
    with tempfile.TemporaryDirectory(prefix="bench-allowlist-") as tmp:
        empty = [os.path.join(tmp, str(i)) for i in range(16)]
        for directory in empty:
            os.mkdir(directory)
        long_path = {"PATH": os.pathsep.join([*empty, home])}
        short_path = {"PATH": home}
        allowlist = Allowlist([true], short_path)
        cases = (("true, a PATH of 17 entries", "true", long_path),
                 ("true, a PATH of 1 entry", "true", short_path),
                 (f"{true} (absolute)", true, long_path))
        for label, program, env in cases:
            check = functools.partial(allowlist.check, program, env, None)
            print(f"{label:32} {best(check, repeat) * 1e6:6.1f} µs")
    return 0
