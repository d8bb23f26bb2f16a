"""Reading an operator's TOML file (``--callers``, ``--actions``): its table, or one line
saying why not, named after the flag that gave it."""

from __future__ import annotations

import tomllib
from typing import Any

from taskrunner.errors import StartupError


def read_toml(path: str, where: str) -> dict[str, Any]:
    """The file at ``path`` as a table; `StartupError` starting with ``where`` (e.g.
    ``--actions '/etc/actions.toml'``) if it cannot be read or is not TOML."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise StartupError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StartupError(f"{where}: not valid TOML: {str(exc).splitlines()[0]}") from None
