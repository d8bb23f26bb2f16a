"""CPU per request of finding the caller with 1, 10 and 100 --callers.

The single-token check against `--callers` with 1, 10 and 100 callers (one SHA-256 of the
token, then a constant-time comparison with every caller's hash), beside the check before
callers existed; the best of ``--repeat`` timings of ``--number`` calls each.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import hmac
import timeit
from collections.abc import Callable

from taskrunner.web.callers import Caller, Callers, implicit_callers

HEADER = "Bearer token-0"


def callers(n: int) -> Callers:
    return Callers([Caller(f"c{i}", frozenset({"run"}), None,
                           hashlib.sha256(f"token-{i}".encode()).digest()) for i in range(n)])


def single_token_before(header: str) -> None:
    # What web/auth.py's check did before callers: one comparison of the token itself.
    _, _, given = header.partition(" ")
    hmac.compare_digest(given.strip().encode(), b"token-0")


def main(argv: list[str]) -> int:
    """Time each check; one line per check, in µs per call."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment callers",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("--number", type=int, default=100_000, help="calls per timing")
    ap.add_argument("--repeat", type=int, default=5, help="timings; the best is shown")
    args = ap.parse_args(argv)
    cases: list[tuple[str, Callable[[str], object]]] = [
        ("one token, the check before callers", single_token_before),
        ("one token, as the implicit caller", implicit_callers("token-0").identify)]
    cases += [(f"--callers, {n} callers", callers(n).identify) for n in (1, 10, 100)]
    for label, check in cases:
        best = min(timeit.repeat(functools.partial(check, HEADER), number=args.number,
                                 repeat=args.repeat)) / args.number
        print(f"{label}: {best * 1e6:.2f} µs")
    return 0
