"""Encoding W3's 1 MiB result: orjson against json.dumps, in ms per call.

The result of W3 (1 MiB of text in ``stdout``) as a dict, encoded by ``orjson.dumps`` and by
``json.dumps``; for each, the best of ``--repeat`` timings (each of as many calls as fill
0.2 s, as ``python -m timeit`` does).
"""

from __future__ import annotations

import argparse
import functools
import json

import orjson

from bench.timing import best
from bench.workloads import W3_FILE, ensure_w3_file


def main(argv: list[str]) -> int:
    """Time both encoders; one line each."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment encode_w3",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("--repeat", type=int, default=5, help="timings; the best is shown")
    repeat = ap.parse_args(argv).repeat
    ensure_w3_file()
    result = {"status": 0, "stdout": W3_FILE.read_text(), "stderr": ""}
    for name, encode in (("orjson.dumps", orjson.dumps), ("json.dumps", json.dumps)):
        print(f"{name:12} {best(functools.partial(encode, result), repeat) * 1000:.2f} ms")
    return 0
