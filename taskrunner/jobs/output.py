"""`OutputCache`: the outputs of finished jobs read back from the store last, bounded in
bytes, so a job polled again soon is not read from the disk again."""

from __future__ import annotations

from collections import OrderedDict

from taskrunner.process.output import OutputLog


class OutputCache:
    """The outputs read last, most recent last, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._logs: OrderedDict[str, OutputLog] = OrderedDict()

    def get(self, key: str) -> OutputLog | None:
        """The log kept for ``key``, now the most recent; None if none is."""
        log = self._logs.get(key)
        if log is not None:
            self._logs.move_to_end(key)
        return log

    def put(self, key: str, log: OutputLog) -> None:
        """Keep ``log``, dropping the least recent ones beyond ``max_bytes``."""
        self.discard(key)
        if log.size > self.max_bytes:
            return
        self._logs[key] = log
        self.size += log.size
        while self.size > self.max_bytes:
            _, oldest = self._logs.popitem(last=False)
            self.size -= oldest.size

    def discard(self, key: str) -> None:
        """Forget ``key`` (its job was dropped)."""
        log = self._logs.pop(key, None)
        if log is not None:
            self.size -= log.size
