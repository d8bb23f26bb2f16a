"""A property: no parameter value, however crafted (quotes, ';', '$( )', newlines, NUL, a
leading '-'), ever becomes more or fewer argv elements than the template says, or reaches
a shell. Checked on the expansion, then on a real process that prints its argv."""

import functools
import json
import subprocess
import sys
import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from taskrunner.actions.actionfile import parse_action
from taskrunner.config import Config
from taskrunner.errors import InvalidParam

FILE = f'''
[actions.probe]
args = ["{sys.executable}", "-c", "import json, sys; print(json.dumps(sys.argv[1:]))",
        "{{one}}", "--opt={{part}}", "{{flag}}", "{{many}}", "{{n}}", "{{{{lit}}}}"]

[actions.probe.params.one]
type = "string"
pattern = "(?s:.*)"

[actions.probe.params.part]
type = "string"
max_length = 200

[actions.probe.params.flag]
type = "boolean"
flag = "--force"

[actions.probe.params.many]
type = "array"
pattern = "(?s:.*)"
max_items = 5
allow_dash = true

[actions.probe.params.n]
type = "integer"
minimum = -10
maximum = 10
'''

HOSTILE = st.sampled_from(["'", '"', ";", "$(id)", "`id`", "\n", "\x00", "-", "--", "*", "?",
                           " ", "\t", "|", "&", ">", "{", "}", "{one}", "\\", "$HOME", "~"])
TEXT = st.lists(st.one_of(HOSTILE, st.text(max_size=5)), max_size=8).map("".join)


@functools.cache
def action():
    return parse_action("probe", tomllib.loads(FILE)["actions"]["probe"], "probe",
                        Config(port=0))


@settings(max_examples=300, deadline=None)
@given(one=TEXT, part=TEXT, flag=st.booleans(), many=st.lists(TEXT, max_size=5),
       n=st.integers(-10, 10))
def test_values_never_change_the_element_count(one, part, flag, many, n):
    probe = action()
    try:
        argv, _ = probe.bind({"one": one, "part": part, "flag": flag, "many": many, "n": n})
    except InvalidParam as refused:
        # Refused only for a rule: NUL, a leading dash standing whole, a length.
        assert ("NUL" in refused.message or "'-'" in refused.message
                or "longer" in refused.message), refused.message
        return
    fixed = 3  # program, -c, code
    assert len(argv) == fixed + 1 + 1 + int(flag) + len(many) + 1 + 1
    rest = argv[fixed:]
    assert rest[0] == one
    assert rest[1] == f"--opt={part}"
    assert rest[2:2 + int(flag)] == (["--force"] if flag else [])
    assert rest[2 + int(flag):2 + int(flag) + len(many)] == many
    assert rest[-2:] == [str(n), "{lit}"]


@settings(max_examples=25, deadline=None)
@given(one=TEXT.filter(lambda t: "\x00" not in t and not t.startswith("-")),
       many=st.lists(TEXT.filter(lambda t: "\x00" not in t), max_size=3))
def test_a_real_process_gets_each_value_as_one_argument(one, many):
    # What the program receives is exactly the expansion: no shell split, expanded or
    # substituted anything ($(id) stays text, a newline stays inside its argument).
    probe = action()
    argv, _ = probe.bind({"one": one, "part": one, "flag": False, "many": many, "n": 0})
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)
    assert json.loads(done.stdout) == argv[3:]
