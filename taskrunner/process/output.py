"""`OutputLog`: a command's stdout and stderr as written, bounded, replayable in order.

The one output buffer of the service: the engine feeds every command's output into one,
``POST /run`` answers from it, and a job keeps the same log (no second copy) for its
streams and its store.

Each stream keeps at most ``limit`` bytes in one buffer (no per-chunk objects, so a
command writing a byte at a time costs no more memory than one writing megabytes); what
comes past the limit is counted as dropped, so a result can say it was truncated. The
order of stdout and stderr is kept as a list of switch points: entry ``i`` says "up to
here, the output came from stream s". Consecutive chunks of one stream extend the last
entry. After ``max_switches`` entries the order stops being recorded (the rest of each
stream is replayed after what was recorded), so memory stays bounded by
``2 * limit + 8 * max_switches`` bytes whatever the command does.

Readers keep an `OutputCursor` and call `OutputLog.read` to get what they have not seen
(a job's output stream, and the job store, which appends what is new as chunks).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

STREAMS = ("stdout", "stderr")


@dataclass
class OutputCursor:
    """How far one reader has got: the switch entry it is in, and bytes sent per stream."""

    entry: int = 0
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))


class OutputLog:
    """Up to ``limit`` bytes of each stream, and the order they were written in."""

    def __init__(self, limit: int, max_switches: int = 16384) -> None:
        self.limit = limit
        self.max_switches = max_switches
        self.buffers = {name: bytearray() for name in STREAMS}
        self.dropped = dict.fromkeys(STREAMS, 0)
        """Bytes of each stream that came past ``limit`` and were not kept."""
        # Each entry is end_offset * 2 + stream index: stream STREAMS[i] ran up to end_offset.
        self._order = array("q")
        self._last = -1  # stream index of the last entry

    @classmethod
    def from_chunks(cls, chunks: Iterable[tuple[str, bytes]]) -> OutputLog:
        """A log holding ``chunks`` as they were written (a stored job's output)."""
        chunks = list(chunks)
        sizes = dict.fromkeys(STREAMS, 0)
        for stream, data in chunks:
            sizes[stream] += len(data)
        log = cls(max(1, *sizes.values()))
        for stream, data in chunks:
            log.feed(stream, data)
        return log

    def feed(self, stream: str, data: bytes) -> bool:
        """Keep what fits under the limit; False if nothing was kept."""
        buffer = self.buffers[stream]
        room = self.limit - len(buffer)
        if len(data) > room:
            self.dropped[stream] += len(data) - max(room, 0)
        if room <= 0 or not data:
            return False
        buffer += data[:room]
        index = STREAMS.index(stream)
        entry = len(buffer) * 2 + index
        if index == self._last:
            self._order[-1] = entry
        elif len(self._order) < self.max_switches:
            self._order.append(entry)
            self._last = index
        else:
            self._last = -2  # order no longer recorded: read() sends the rest stream by stream
        return True

    def truncated(self, stream: str) -> bool:
        """True when bytes of ``stream`` past the limit were dropped."""
        return self.dropped[stream] > 0

    def text(self, stream: str) -> str:
        """What was kept of ``stream``, decoded as UTF-8; undecodable bytes become U+FFFD."""
        return self.buffers[stream].decode("utf-8", "replace")

    @property
    def size(self) -> int:
        """Bytes kept, both streams."""
        return sum(len(buffer) for buffer in self.buffers.values())

    def read(self, cursor: OutputCursor) -> list[tuple[str, bytes]]:
        """The chunks ``cursor`` has not seen, in the order written; advances ``cursor``."""
        chunks: list[tuple[str, bytes]] = []
        order = self._order
        while cursor.entry < len(order):
            value = order[cursor.entry]
            stream, end = STREAMS[value & 1], value >> 1
            start = cursor.sent[stream]
            if end > start:
                chunks.append((stream, bytes(memoryview(self.buffers[stream])[start:end])))
                cursor.sent[stream] = end
            if cursor.entry == len(order) - 1 and self._last != -2:
                break  # the last entry may still grow: stay on it
            cursor.entry += 1
        if self._last == -2:
            for stream in STREAMS:
                start, end = cursor.sent[stream], len(self.buffers[stream])
                if end > start:
                    chunks.append((stream, bytes(memoryview(self.buffers[stream])[start:end])))
                    cursor.sent[stream] = end
        return chunks
