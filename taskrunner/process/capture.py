"""Bounded capture of one output stream (stdout or stderr) of a command.

Keeps at most ``limit`` bytes, counts and drops the rest, and says whether it dropped any.
The caller keeps reading the pipe past the limit so the command never blocks on a full pipe.
"""


class OutputCapture:
    """The first ``limit`` bytes of a stream, plus how much was dropped."""

    __slots__ = ("_chunks", "_kept", "dropped", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._kept = 0
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        """Keep what still fits under the limit; count the rest as dropped."""
        room = self.limit - self._kept
        if len(data) <= room:
            self._chunks.append(data)
            self._kept += len(data)
            return
        if room > 0:
            self._chunks.append(data[:room])
            self._kept = self.limit
        self.dropped += len(data) - max(room, 0)

    @property
    def truncated(self) -> bool:
        """True when bytes past the limit were dropped."""
        return self.dropped > 0

    @property
    def size(self) -> int:
        """Bytes kept."""
        return self._kept

    def text(self) -> str:
        """What was kept, decoded as UTF-8; undecodable bytes become U+FFFD."""
        if len(self._chunks) == 1:
            return self._chunks[0].decode("utf-8", "replace")
        return b"".join(self._chunks).decode("utf-8", "replace")
