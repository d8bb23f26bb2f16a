"""`ActionWrappers`: the wrappers of the actions that set limits of their own.

An action's limits (``user``, ``limit_*``) override its caller's key by key: the caller's
limits as a whole `Config`, the action's put in, built by the instance's own factory, so
they are checked as the flags are. One wrapper per such `Config`, made when first used.
"""

from __future__ import annotations

import os

from taskrunner.config import Config
from taskrunner.process.containment import Containment, containment_from_config


class ActionWrappers:
    """The wrappers of actions that set limits, one per whole `Config` (the caller's limits
    with the action's over them), made when first used and kept until the instance stops:
    their number is bounded by the callers and the actions files."""

    def __init__(self) -> None:
        self._made: dict[Config, Containment] = {}

    def get(self, config: Config) -> Containment:
        """The wrapper for ``config``; `StartupError` if it cannot be made (e.g. a ``user``
        that no longer exists)."""
        wrapper = self._made.get(config)
        if wrapper is None:
            wrapper = self._made[config] = containment_from_config(config, os.environ)
        return wrapper

    def close(self) -> None:
        """Release every wrapper (at shutdown, when nothing runs)."""
        for wrapper in self._made.values():
            wrapper.close()
        self._made.clear()
