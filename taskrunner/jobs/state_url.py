"""Where the PostgreSQL index's URL comes from, keeping its password out of every argv.

A command line is world-readable (``/proc/<pid>/cmdline``), so ``--state-url`` may not carry
a password (`taskrunner.config` refuses one): libpq finds it in ``PGPASSFILE`` or
``~/.pgpass``, or the whole URL is read at start from ``--state-url-file``, a file only its
owner may read or write (else the instance refuses to start, as ssh does with a key), or
root's that its group may read too (a Kubernetes Secret's, docs/deploy.md).
"""

from __future__ import annotations

import os
import re
import stat

from taskrunner.config import Config
from taskrunner.errors import StartupError


def _private(info: os.stat_result) -> bool:
    # Its owner's alone; or root's, readable by its group as well (0440, 0640), as libpq
    # takes a root-owned key: only root could have given the group that right, and a
    # Kubernetes Secret mounted for a non-root pod is such a file (root:fsGroup, 0440).
    if info.st_uid == 0:
        return not info.st_mode & 0o026
    return not info.st_mode & 0o066


def state_url(config: Config) -> str:
    """The job index's URL: ``--state-url``, or what ``--state-url-file`` holds (read now);
    `StartupError` (one line) if the file cannot be used."""
    path = config.state_url_file
    if not path:
        return config.state_url
    where = f"--state-url-file {path!r}"
    try:
        with open(path, encoding="utf-8") as file:
            info = os.fstat(file.fileno())
            if not _private(info):
                raise StartupError(f"{where}: group or others may read or write it (mode "
                                   f"{stat.S_IMODE(info.st_mode):04o}); it holds a "
                                   "password: chmod 600 it")
            text = file.read().strip()
    except OSError as exc:
        raise StartupError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise StartupError(f"{where}: not UTF-8 text") from None
    if not re.fullmatch(r"postgres(ql)?://\S+", text):
        raise StartupError(f"{where}: expected one postgresql:// URL")
    return text
