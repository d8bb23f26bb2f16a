"""The --actions file through the actions package's own API: what it accepts, and one line
naming the action and the key for every mistake; expansion of the template."""

import pytest
from actionsutil import GREET

from taskrunner.actions.actionfile import load_actions
from taskrunner.config import Config
from taskrunner.errors import InvalidParam, StartupError

GOOD = GREET + r'''

[actions.deploy]
args = ["/bin/echo", "--env={env}", "{force}", "{hosts}", "{count}", "{{literal}}"]
user = "nobody"
limit-cpu = 5

[actions.deploy.params.env]
type = "string"
enum = ["staging", "prod"]

[actions.deploy.params.force]
type = "boolean"
flag = "--force"
default = false

[actions.deploy.params.hosts]
type = "array"
pattern = "[a-z0-9.-]+"
max_items = 3
default = []

[actions.deploy.params.count]
type = "integer"
minimum = 1
maximum = 5
default = 1
'''


def load(tmp_path, text):
    path = tmp_path / "actions.toml"
    path.write_text(text)
    return load_actions(str(path), Config(port=0))


def test_a_good_file_expands_placeholders_whole_and_in_part(tmp_path):
    actions = load(tmp_path, GOOD)
    assert actions.names == ["greet", "deploy"]
    greet = actions.get("greet")
    assert greet.timeout == 10
    argv, params = greet.bind({"name": "Ada Lovelace"})
    assert argv == ["/usr/bin/printf", "%s, %s!\n", "hello", "Ada Lovelace"]
    assert params == {"greeting": "hello", "name": "Ada Lovelace"}
    deploy = actions.get("deploy")
    assert deploy.limits == {"user": "nobody", "limit_cpu": 5}
    argv, _ = deploy.bind({"env": "prod", "force": True, "hosts": ["a", "b-1"], "count": 3})
    assert argv == ["/bin/echo", "--env=prod", "--force", "a", "b-1", "3", "{literal}"]
    argv, _ = deploy.bind({"env": "staging"})
    assert argv == ["/bin/echo", "--env=staging", "1", "{literal}"]


@pytest.mark.parametrize(("given", "says"), [
    ({}, "parameter name is required"),
    ({"name": "Ada", "nmae": "x"}, "unknown parameter 'nmae'"),
    ({"name": "Ada; rm -rf /"}, "parameter name must match the whole of"),
    ({"name": "Ada", "greeting": "x" * 21}, "parameter greeting is longer than 20"),
    ({"name": "Ada", "greeting": "-n"}, "parameter greeting must not begin with '-'"),
    ({"name": 7}, "parameter name must be a string, not a number"),
    ({"name": "Ad\x00a"}, "parameter name must not contain a NUL byte"),
    ([], "params must be an object"),
])
def test_a_wrong_value_names_the_parameter_and_the_rule(tmp_path, given, says):
    with pytest.raises(InvalidParam) as refused:
        load(tmp_path, GOOD).get("greet").bind(given)
    assert says in refused.value.message


@pytest.mark.parametrize(("given", "says"), [
    ({"env": "dev"}, "parameter env must be one of 'staging', 'prod' (enum)"),
    ({"env": "prod", "count": 6}, "parameter count must be from 1 to 5"),
    ({"env": "prod", "count": True}, "parameter count must be an integer"),
    ({"env": "prod", "force": "yes"}, "parameter force must be true or false"),
    ({"env": "prod", "hosts": ["a", "b", "c", "d"]}, "parameter hosts has 4 items; at most 3"),
    ({"env": "prod", "hosts": ["-rf"]}, "parameter hosts[0] must not begin with '-'"),
])
def test_each_type_keeps_its_bounds(tmp_path, given, says):
    with pytest.raises(InvalidParam) as refused:
        load(tmp_path, GOOD).get("deploy").bind(given)
    assert says in refused.value.message


def test_a_dash_inside_an_element_is_text_not_an_option(tmp_path):
    actions = load(tmp_path, '''
[actions.a]
args = ["/bin/echo", "--name={n}", "{d}"]
[actions.a.params.n]
type = "string"
pattern = ".*"
[actions.a.params.d]
type = "string"
pattern = ".*"
allow_dash = true
''')
    argv, _ = actions.get("a").bind({"n": "-x", "d": "-y"})
    assert argv == ["/bin/echo", "--name=-x", "-y"]


BAD = [
    ("not toml [", "not valid TOML"),
    ("", "expected [actions.NAME] tables"),
    ("[actions]\n", "no actions"),
    ("[actions.a]\ndescription = 'x'\n", "action 'a': args missing"),
    ("[actions.a]\nargs = ['/bin/echo']\nshell = true\n", "action 'a': unknown key(s) shell"),
    ("[actions.a]\nargs = ['/bin/echo', '{x}']\n", "action 'a': args: args[1]: {x} names no"),
    ("[actions.a]\nargs = ['{x}']\n[actions.a.params.x]\ntype = 'string'\nenum = ['a']\n",
     "action 'a': args: args[0] must be fixed"),
    ("[actions.a]\nargs = ['/bin/echo', '{x']\n", "action 'a': args: args[1]: '{' is not a"),
    ("[actions.a]\nargs = ['/bin/echo', '{x}']\n[actions.a.params.x]\ntype = 'string'\n",
     "action 'a' param 'x': no bound"),
    ("[actions.a]\nargs = ['/bin/echo', '{x}']\n[actions.a.params.x]\ntype = 'integer'\n"
     "minimum = 1\n", "action 'a' param 'x': maximum missing"),
    ("[actions.a]\nargs = ['/bin/echo', '{x}']\n[actions.a.params.x]\ntype = 'array'\n"
     "pattern = '.*'\n", "action 'a' param 'x': max_items missing"),
    ("[actions.a]\nargs = ['/bin/echo', '-{x}']\n[actions.a.params.x]\ntype = 'array'\n"
     "pattern = '.*'\nmax_items = 2\n", "{x} is an array, so it must be an element of its own"),
    ("[actions.a]\nargs = ['/bin/echo', '{x}']\n[actions.a.params.x]\ntype = 'float'\n",
     "action 'a' param 'x': type must be one of"),
    ("[actions.a]\nargs = ['/bin/echo', '{x}']\n[actions.a.params.x]\ntype = 'string'\n"
     "pattern = '('\n", "action 'a' param 'x': pattern is not a regular expression"),
    ("[actions.a]\nargs = ['/bin/echo', '{x}']\n[actions.a.params.x]\ntype = 'string'\n"
     "enum = ['a']\ndefault = 'b'\n", "action 'a' param 'x': default: parameter x must be one"),
    ("[actions.a]\nargs = ['/bin/echo', '{x}']\n[actions.a.params.x]\ntype = 'string'\n"
     "pattern = '(?s).*'\n", "action 'a' param 'x': pattern cannot stand in a group"),
    ("[actions.a]\nargs = ['/bin/echo']\n[actions.a.params.x]\ntype = 'string'\nenum = ['a']\n",
     "action 'a': args: param(s) x appear in no element"),
    ("[actions.a]\nargs = ['/bin/echo']\ntimeout = 99999\n", "action 'a': timeout must be"),
    ("[actions.a]\nargs = ['/bin/echo']\ncwd = 'relative'\n", "action 'a': cwd must be"),
    ("[actions.a]\nargs = ['/bin/echo']\nlimit_cpu = 'lots'\n", "action 'a': limit_cpu must be"),
    ("[actions.a]\nargs = ['/bin/echo']\nlimit_as = -1\n", "action 'a': limit_as must be >= 0"),
    ("[actions.'a b']\nargs = ['/bin/echo']\n", "action 'a b': a name is"),
]


@pytest.mark.parametrize(("text", "says"), BAD, ids=[s for _, s in BAD])
def test_every_mistake_is_one_line_naming_the_action_and_the_key(tmp_path, text, says):
    with pytest.raises(StartupError) as refused:
        load(tmp_path, text)
    message = str(refused.value)
    assert says in message
    assert "\n" not in message
    assert message.startswith("--actions ")


def test_a_file_cut_in_the_middle_is_refused(tmp_path):
    # Every cut of the good file either fails to load or accepts no more than the whole:
    # a parameter cut before its bound is refused, never read as "any string".
    whole = load(tmp_path, GOOD)
    lines = GOOD.splitlines(keepends=True)
    for end in range(len(lines)):
        try:
            part = load(tmp_path, "".join(lines[:end]))
        except StartupError:
            continue
        for name in part.names:
            cut, full = part.get(name), whole.get(name)
            for pname, param in cut.params.items():
                for bound in ("enum", "pattern", "max_length", "minimum", "maximum",
                              "max_items", "allow_dash", "flag"):
                    assert getattr(param, bound) == getattr(full.params[pname], bound), (
                        end, name, pname, bound)
