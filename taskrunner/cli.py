"""The command line: builds a `Config` from flags and runs a `Server`. Nothing else.

Every flag comes from a `Config` field (name, default and help), so ``--help`` always lists
all of them with their defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from taskrunner import __version__
from taskrunner.completion import add_completion_flag
from taskrunner.config import Config, settings
from taskrunner.errors import StartupError
from taskrunner.logs import setup_logging
from taskrunner.server import Server
from taskrunner.web.auth import check_token
from taskrunner.web.callers import hash_token


def build_parser() -> argparse.ArgumentParser:
    """An argument parser with one ``--flag`` per `Config` field."""
    parser = argparse.ArgumentParser(
        prog="python -m taskrunner",
        description="Run OS commands for HTTP callers without blocking.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for setting in settings():
        flag = "--" + setting.name.replace("_", "-")
        if setting.metadata.get("repeatable"):
            # A tuple field: one value per use of the flag, e.g. --allow echo --allow ls.
            default: Any = setting.default
            parser.add_argument(flag, action="append", default=list(default),
                                help=setting.metadata["help"], metavar=setting.name.upper())
            continue
        if isinstance(setting.default, bool):  # a switch: --flag turns it on
            parser.add_argument(flag, action="store_true", default=setting.default,
                                help=setting.metadata["help"])
            continue
        kind: Any = type(setting.default)
        parser.add_argument(flag, type=kind, default=setting.default,
                            help=setting.metadata["help"], metavar=setting.name.upper())
    parser.add_argument("--version", action="version", version=f"taskrunner {__version__}")
    add_completion_flag(parser, "taskrunner", 1)  # 1: as any refused start
    return parser


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into a `Config`; exit 2 on bad flags."""
    parser = build_parser()
    values = vars(parser.parse_args(argv))
    for setting in settings():
        if setting.metadata.get("repeatable"):
            values[setting.name] = tuple(values[setting.name])
    try:
        return Config(**values)
    except ValueError as exc:
        parser.error(str(exc))


def run(main_coroutine: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run ``main_coroutine`` to the end on a new loop of the kind ``--event-loop`` names.

    Tornado runs on any asyncio loop. uvloop's, written over libuv, spends less time per
    callback and per I/O event than the standard library's, and a small request is mostly
    such work.
    """
    if event_loop == "uvloop":
        import uvloop  # only when chosen: --event-loop asyncio needs nothing beyond Python

        uvloop.run(main_coroutine)
    else:
        asyncio.run(main_coroutine)


def freeze_startup_objects() -> None:
    """Keep the cyclic garbage collector off the start-up heap.

    Everything alive now (modules, the app) lives as long as the process: `gc.freeze`
    moves it out of the collector's sight, so no collection walks it again. The thresholds
    stay Python's: higher ones bought no throughput and let garbage cycles that hold large
    outputs pile up (see `taskrunner.process.heap`; figures in docs/bench.md).
    """
    gc.collect()
    gc.freeze()


MIN_TOKEN_LENGTH = 20
"""Below this many characters, ``hash-token`` warns that the token is weak."""


def hash_token_command(argv: Sequence[str]) -> None:
    """``python -m taskrunner hash-token``: read a token on stdin (one line, surrounding
    whitespace dropped), write its SHA-256 for the callers file; exit 1 if no client could
    send it."""
    if argv:
        sys.exit("usage: python -m taskrunner hash-token < TOKEN-FILE")
    token = sys.stdin.read().strip()
    try:
        if not token:
            raise StartupError("stdin: no token")
        check_token(token, "stdin")
    except StartupError as exc:
        sys.exit(f"taskrunner hash-token: {exc}")
    if len(token) < MIN_TOKEN_LENGTH:
        # A SHA-256 is cheap to compute: a short token can be found from its hash offline.
        sys.stderr.write(f"taskrunner hash-token: warning: the token has {len(token)} "
                         f"characters; use {MIN_TOKEN_LENGTH} or more random ones\n")
    sys.stdout.write(hash_token(token) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Run one instance until SIGTERM or SIGINT; exit 0 after a clean shutdown.
    ``hash-token`` as the first argument runs `hash_token_command` instead."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["hash-token"]:
        hash_token_command(args[1:])
        return
    config = parse_config(args)
    setup_logging(config.log_format)
    freeze_startup_objects()
    try:
        run(Server(config).serve(), config.event_loop)
    except StartupError as exc:
        sys.exit(f"taskrunner: {exc}")
