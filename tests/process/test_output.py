from hypothesis import given
from hypothesis import strategies as st

from taskrunner.process.output import OutputCursor, OutputLog


def coalesce(chunks):
    merged = []
    for stream, data in chunks:
        if merged and merged[-1][0] == stream:
            merged[-1] = (stream, merged[-1][1] + data)
        elif data:
            merged.append((stream, data))
    return merged


def test_interleaving_is_kept_and_runs_of_one_stream_are_one_entry():
    log = OutputLog(limit=100)
    cursor = OutputCursor()
    for _ in range(1000 // 10):
        log.feed("stdout", b"a")
    assert log.read(cursor) == [("stdout", b"a" * 100)]
    log.feed("stderr", b"e")
    assert log.read(cursor) == [("stderr", b"e")]
    log.feed("stdout", b"dropped")  # stdout is at its limit
    log.feed("stderr", b"f")
    assert log.read(cursor) == [("stderr", b"f")]
    assert len(log._order) == 2
    assert log.read(OutputCursor()) == [("stdout", b"a" * 100), ("stderr", b"ef")]


def test_a_reader_on_the_last_entry_sees_it_grow():
    log = OutputLog(limit=100)
    cursor = OutputCursor()
    log.feed("stdout", b"ab")
    assert log.read(cursor) == [("stdout", b"ab")]
    log.feed("stdout", b"cd")
    assert log.read(cursor) == [("stdout", b"cd")]
    assert log.read(cursor) == []


def test_past_max_switches_memory_stays_bounded_and_nothing_is_lost():
    log = OutputLog(limit=10_000, max_switches=8)
    for i in range(1000):
        log.feed("stdout" if i % 2 else "stderr", bytes([48 + i % 10]))
    assert len(log._order) == 8
    chunks = log.read(OutputCursor())
    out = b"".join(data for stream, data in chunks if stream == "stdout")
    err = b"".join(data for stream, data in chunks if stream == "stderr")
    assert (out, err) == (bytes(log.buffers["stdout"]), bytes(log.buffers["stderr"]))
    assert len(out) == len(err) == 500


feeds = st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), st.binary(max_size=8),
                           st.booleans()), max_size=60)


@given(feeds, st.integers(1, 40), st.integers(1, 10))
def test_readers_see_every_kept_byte_once_in_order(ops, limit, max_switches):
    log = OutputLog(limit=limit, max_switches=max_switches)
    cursor = OutputCursor()
    seen, fed = [], []
    for stream, data, read_now in ops:
        room = limit - len(log.buffers[stream])
        log.feed(stream, data)
        fed.append((stream, data[:max(room, 0)]))
        if read_now:
            seen += log.read(cursor)
    seen += log.read(cursor)
    for stream in ("stdout", "stderr"):
        assert b"".join(d for s, d in seen if s == stream) == bytes(log.buffers[stream])
        assert bytes(log.buffers[stream]) == b"".join(d for s, d in fed if s == stream)
    if len(coalesce(fed)) <= max_switches:
        assert coalesce(seen) == coalesce(fed)
    replay = log.read(OutputCursor())  # a late reader gets the same bytes
    for stream in ("stdout", "stderr"):
        assert b"".join(d for s, d in replay if s == stream) == bytes(log.buffers[stream])


@given(st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), st.binary(max_size=40)),
                max_size=30), st.integers(min_value=1, max_value=100))
def test_what_is_kept_and_what_is_dropped_add_up_to_what_was_written(chunks, limit):
    log = OutputLog(limit=limit)
    for stream, data in chunks:
        log.feed(stream, data)
    for stream in ("stdout", "stderr"):
        written = sum(len(data) for s, data in chunks if s == stream)
        assert len(log.buffers[stream]) + log.dropped[stream] == written
        assert len(log.buffers[stream]) == min(written, limit)
        assert log.truncated(stream) == (written > limit)
