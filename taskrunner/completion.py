"""``--print-completion bash|zsh``: a shell's completion script, generated from the parser.

Both command lines (``trun`` and ``python -m taskrunner``, whose console script is
``taskrunner``) add this flag; shtab writes the script from the argparse parser itself, so
completion never lags behind a new flag or subcommand. shtab is imported only when the flag
is used: nothing else pays for it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from taskrunner.missing import exit_missing

SHELLS = ("bash", "zsh")
"""The shells we test (tests/test_completion.py); shtab knows more."""


def add_completion_flag(parser: argparse.ArgumentParser, command: str,
                        missing_status: int) -> None:
    """Add ``--print-completion SHELL`` to ``parser``: print the completion script of the
    command named ``command`` (what a user types: a shell completes a command by its name,
    so ``python -m taskrunner``'s script is for ``taskrunner``) and exit 0. Without shtab,
    one line (taskrunner/missing.py) and exit ``missing_status``, the command's own."""
    parser.add_argument("--print-completion", action=_PrintCompletion, command=command,
                        missing_status=missing_status,
                        choices=SHELLS, metavar="{" + ",".join(SHELLS) + "}",
                        help=f"print the {command} completion script for this shell "
                             f"(bash: source <({command} --print-completion bash))")


class _PrintCompletion(argparse.Action):
    """Prints the script and exits, as ``--version`` does (so no other argument is needed)."""

    def __init__(self, option_strings: Sequence[str], dest: str, command: str,
                 missing_status: int, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=None, default=argparse.SUPPRESS, **kwargs)
        self.command = command
        self.missing_status = missing_status

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        try:
            import shtab
        except ModuleNotFoundError as error:
            exit_missing(self.command, error, self.command, self.missing_status)
        parser.prog = self.command  # the name the script registers; we exit right after
        sys.stdout.write(shtab.complete(parser, shell=values))
        parser.exit(0)
