"""``scripts/bench experiment NAME [ARGS]``: run one module of `bench.experiments`.

An experiment is a module whose docstring opens with its one-line purpose and whose
``main(argv) -> int`` takes the arguments after its name (each answers ``--help``).
``--list`` reads the purposes from the modules' source without importing them, so listing
needs none of what an experiment imports (a browser driver, the lab, root).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

from bench import experiments

PROG = "scripts/bench experiment"


def names() -> list[str]:
    """Every experiment, by module name, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__))


def purpose(name: str) -> str:
    """The first line of an experiment's docstring."""
    path = Path(experiments.__path__[0]) / f"{name}.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.strip().split("\n", 1)[0]


def main(argv: list[str]) -> int:
    """List the experiments, or run one with the arguments that follow its name."""
    ap = argparse.ArgumentParser(
        prog=PROG, description="Run one experiment of bench/experiments (docs/bench.md "
        "names the one behind each figure); NAME --help tells its arguments.")
    ap.add_argument("--list", action="store_true", help="list the experiments and their purpose")
    ap.add_argument("name", nargs="?", metavar="NAME", choices=names())
    ap.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                    help="the experiment's own arguments")
    opts = ap.parse_args(argv)
    if opts.list:
        width = max(map(len, names()))
        for name in names():
            print(f"{name:{width}}  {purpose(name)}")
        return 0
    if opts.name is None:
        ap.error("NAME is required (--list lists them)")
    module = importlib.import_module(f"{experiments.__name__}.{opts.name}")
    run: Callable[[list[str]], int] = module.main
    return run(opts.args)
