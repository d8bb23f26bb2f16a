"""What a listing shows of a job's args, read from the index's head of them (its SELECT
reads no more than `LISTED_ARGS_HEAD` characters of the stored JSON): said to be cut
exactly when the whole args would be, never more than the whole args' summary, and the
same summary when the stored args fit in the head."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from taskrunner.jobs.index import LISTED_ARGS_HEAD, _args_head, summary_args

# What makes the stored JSON long: escapes of 6 and 12 characters, quotes, backslashes.
CHARS = st.sampled_from(["a", "é", "\x1b", "😀", '"', "\\", "\u202e", " "])
ARG = st.one_of(st.text(CHARS, max_size=300),
                st.integers(0, 20_000).map(lambda n: "😀\x1b"[n % 2] * n))
ARGS = st.lists(ARG, min_size=1, max_size=200)


@settings(max_examples=300, deadline=None)
@given(ARGS)
def test_the_heads_summary_is_cut_exactly_when_the_whole_ones_is(args):
    stored = json.dumps(args)
    shown, cut = summary_args(_args_head(stored[:LISTED_ARGS_HEAD]))
    whole, whole_cut = summary_args(args)
    assert cut == whole_cut
    if len(stored) <= LISTED_ARGS_HEAD:
        assert shown == whole
    assert len(shown) <= len(whole)
    assert all(whole[i].startswith(arg) for i, arg in enumerate(shown))
    json.dumps(shown, ensure_ascii=False).encode()  # no lone surrogate from a cut escape


@settings(max_examples=300, deadline=None)
@given(ARGS, st.integers(1, 100_000))
def test_any_head_decodes_to_prefixes_of_the_args(args, length):
    head = _args_head(json.dumps(args)[:length])
    assert len(head) <= len(args)
    assert all(args[i].startswith(arg) for i, arg in enumerate(head))
