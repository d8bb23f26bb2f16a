"""One line, not a traceback, when the Python that runs an entry point lacks a dependency.

`python3 -m taskrunner.client` with a system Python that has none of the package's
dependencies (the package found through ``PYTHONPATH`` or a checkout) used to end in a
traceback about ``httpx``; a person needs to hear which Python it was and what to run
instead. The entry points (``__main__`` modules, console scripts) import their real module
inside ``try``/``except ModuleNotFoundError`` and hand the error here. Only the standard
library is imported: this runs exactly when the rest may be missing.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def exit_missing(program: str, error: ModuleNotFoundError, script: str, status: int) -> NoReturn:
    """Write ``PROGRAM: needs MODULE, which this Python (PATH) lacks: ...`` on stderr and
    exit with ``status``; re-raise ``error`` when the missing module is one of ours (a
    broken install is a bug to see whole, not a dependency to install).

    ``script`` is the console script's name: when the package sits in a checkout whose
    ``.venv`` has it (what scripts/serve and scripts/install make), the line names that file.
    """
    module = (error.name or "").partition(".")[0]
    if not module or module == "taskrunner":
        raise error
    venv_script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               ".venv", "bin", script)
    instead = (f"use {venv_script}" if os.access(venv_script, os.X_OK)
               else f"use the {script} of a virtual environment that has taskrunner")
    sys.stderr.write(f"{program}: needs {module}, which this Python ({sys.executable}) lacks: "
                     f"{instead}, or install taskrunner into this Python "
                     "(pip install taskrunner; in a checkout: pip install .)\n")
    sys.exit(status)
