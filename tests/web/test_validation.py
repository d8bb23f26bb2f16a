"""Property-based tests of request validation: any body is a CommandSpec or a RequestError."""

import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from taskrunner.errors import RequestError
from taskrunner.process.engine import CommandSpec
from taskrunner.web.validation import FIELDS, parse_run_request

LIMITS = {"default_timeout": 30.0, "max_timeout": 3600.0}

json_scalars = (st.none() | st.booleans() | st.integers() | st.text()
                | st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
# Objects whose keys are mostly the real field names, with values of any shape.
near_requests = st.dictionaries(st.sampled_from([*FIELDS, "timout", "ARGS", ""]), json_values,
                                max_size=6)


def parse(body: bytes) -> CommandSpec | RequestError:
    try:
        spec = parse_run_request(body, **LIMITS)
    except RequestError as exc:
        assert exc.status == 400 and exc.code and exc.message
        return exc
    # Whatever is accepted can be handed to exec: every string encodes, no NUL in any.
    strings = [*spec.args, spec.stdin or "", spec.cwd or "", *(spec.env or {}).items()]
    for item in strings:
        for string in (item if isinstance(item, tuple) else (item,)):
            assert "\x00" not in string
            string.encode("utf-8")
    return spec


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_any_bytes_give_a_spec_or_a_request_error(body):
    parse(body)


@settings(max_examples=150)
@given(json_values)
def test_any_json_value_gives_a_spec_or_a_request_error(value):
    parse(json.dumps(value).encode())


@given(st.sampled_from(["args", "stdin", "cwd", "env"]),
       st.sampled_from(["\\ud800", "\\udfff", "a\\udc80b"]))
def test_a_lone_surrogate_escape_is_a_request_error_not_a_crash(field, escape):
    value = f'"{escape}"'
    body = {"args": f'["echo", {value}]', "stdin": value, "cwd": value,
            "env": f'{{"K": {value}}}'}[field]
    text = f'{{"args": ["echo"], "{field}": {body}}}' if field != "args" else \
        f'{{"args": {body}}}'
    result = parse(text.encode())
    assert isinstance(result, RequestError) and "surrogate" in result.message


@settings(max_examples=250)
@given(near_requests)
def test_any_object_with_near_field_names_gives_a_spec_or_a_request_error(fields):
    result = parse(json.dumps(fields).encode())
    if isinstance(result, CommandSpec):
        assert set(fields) <= set(FIELDS) and result.args


text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))
valid_requests = st.fixed_dictionaries(
    {"args": st.lists(text, min_size=1, max_size=5).filter(lambda a: a[0] != "")},
    optional={
        "timeout": st.floats(min_value=0.001, max_value=3600.0) | st.integers(1, 3600),
        "stdin": text,
        "env": st.dictionaries(text.filter(lambda k: k and "=" not in k), text, max_size=4),
        "cwd": text.filter(bool),
    },
)


@settings(max_examples=250)
@given(valid_requests, st.booleans())
def test_valid_bodies_round_trip(fields, ascii_only):
    spec = parse(json.dumps(fields, ensure_ascii=ascii_only).encode())
    assert isinstance(spec, CommandSpec), spec
    assert list(spec.args) == fields["args"]
    assert math.isclose(spec.timeout, fields.get("timeout", LIMITS["default_timeout"]))
    assert spec.stdin == fields.get("stdin")
    assert spec.env == fields.get("env")
    assert spec.cwd == fields.get("cwd")


@settings(max_examples=200)
@given(valid_requests, st.sampled_from(["args", "timeout", "stdin", "env", "cwd"]),
       json_values)
def test_replacing_one_field_never_raises_anything_else(fields, name, value):
    parse(json.dumps({**fields, name: value}).encode())


@settings(max_examples=100)
@given(st.integers(1, 6000), st.booleans(), st.sampled_from(
    ['{{"args": ["true"], "timeout": {n}}}', '{{"args": ["true", {n}]}}',
     '{{"args": ["true"], "env": {{"K": {n}}}}}', '[{n}]']))
def test_integers_of_any_length_give_a_spec_or_a_request_error(digits, negative, template):
    number = ("-" if negative else "") + "7" * digits
    parse(template.format(n=number).encode())


# -- callback_url (POST /jobs) -------------------------------------------------------------

url_like = st.one_of(
    st.text(),
    st.builds(lambda scheme, rest: scheme + rest,
              st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "http:/", ""]),
              st.text(alphabet=st.characters(codec="ascii"), max_size=40)),
    st.from_regex(r"\Ahttps?://[a-z0-9.:\[\]@]{0,12}(/[!-~]{0,8})?\Z"),
)


@given(url_like)
@example("http://h/x?a=b#c").via("the default port of http")
@example("https://H/").via("a name is matched case aside")
@example("http://127.0.0.1:8080").via("an address with its port")
@example("http://[::1]:9/").via("IPv6")
@example("http://[1]:9/").via("brackets around no IPv6 address: on no list")
@example("http://u@h/").via("user info")
@settings(max_examples=400)
def test_any_callback_url_is_accepted_or_a_4xx(value):
    from taskrunner.errors import CallbackNotAllowed
    from taskrunner.jobs.callbacks import CallbackHosts, host_key
    from taskrunner.web.validation import parse_job_request

    hosts = CallbackHosts(("h", "127.0.0.1:8080", "[::1]:9"))
    body = json.dumps({"args": ["true"], "callback_url": value}).encode()
    try:
        _, url = parse_job_request(body, callback_hosts=hosts, **LIMITS)
    except RequestError as exc:
        assert exc.code == "invalid_field", exc
        return
    except CallbackNotAllowed:
        return
    # Accepted: a URL of one of the listed hosts, with no user info to be kept.
    assert url == value and "@" not in value.split("/")[2]
    assert host_key(url) in {("h", 80), ("h", 443), ("127.0.0.1", 8080), ("::1", 9)}


# -- what a refusal says (each names the field and what was sent instead) --------------------

@pytest.mark.parametrize("body,message", [
    (b"[]", "body must be a JSON object, not an array"),
    (b"[" * 100_000 + b"]" * 100_000, "body is nested too deeply"),
    (b'{"args": null}', "args must be an array of strings, not null"),
    (b'{"args": true}', "args must be an array of strings, not a boolean"),
    (b'{"args": 1.5}', "args must be an array of strings, not a number"),
    (b'{"args": "ls"}', "args must be an array of strings, not a string"),
    (b'{"args": {}}', "args must be an array of strings, not an object"),
    (b'{"args": []}', "args must not be empty: it names the program to run"),
    (b'{"args": [""]}', "args[0] must not be empty: it names the program to run"),
    (b'{"args": ["true"], "timeout": "1"}', "timeout must be a number of seconds, not a string"),
    (b'{"args": ["true"], "env": []}', "env must be an object of strings, not an array"),
    (b'{"args": ["true"], "stdin": 1}', "stdin must be a string, not a number"),
    (b'{"args": ["true"], "cwd": ""}', "cwd must not be empty"),
    (b'{"args": ["true"], "env": {"": "x"}}', "env key must not be empty"),
    (b'{"args": ["true"], "timout": 1}',
     "unknown field 'timout'; known fields are args, timeout, stdin, env, cwd"),
    (b'{"args": ["true"], "b": 1, "a": 2}',
     "unknown fields 'a', 'b'; known fields are args, timeout, stdin, env, cwd"),
    (b'{"timeout": 1}', "args is required: an array of strings naming the command"),
])
def test_a_refusal_says_what_is_wrong(body, message):
    error = parse(body)
    assert isinstance(error, RequestError)
    assert error.message == message


def test_the_maximum_timeout_itself_is_accepted():
    spec = parse(b'{"args": ["true"], "timeout": 3600}')
    assert isinstance(spec, CommandSpec) and spec.timeout == 3600.0
    assert isinstance(parse(b'{"args": ["true"], "timeout": 3600.001}'), RequestError)
