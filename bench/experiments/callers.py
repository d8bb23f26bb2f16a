"""CPU per request of finding the caller: the single-token check against `--callers` with
1, 10 and 100 callers (one SHA-256 of the token, then a constant-time comparison with every
caller's hash). Usage: PYTHONPATH=. python3 scripts/bench_callers.py; see docs/bench.md."""

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


def main() -> None:
    cases: list[tuple[str, Callable[[str], object]]] = [
        ("one token, the check before callers", single_token_before),
             ("one token, as the implicit caller", implicit_callers("token-0").identify)]
    cases += [(f"--callers, {n} callers", callers(n).identify) for n in (1, 10, 100)]
    for label, check in cases:
        number = 100_000
        best = min(timeit.repeat(functools.partial(check, HEADER), number=number,
                                 repeat=5)) / number
        print(f"{label}: {best * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
