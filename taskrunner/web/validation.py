"""Parsing and validation of a command request, the body of ``POST /run`` and ``POST /jobs``.

`parse_run_request` turns raw body bytes into a `CommandSpec` or raises a `RequestError`
that says, for a person, exactly what is wrong. Strict on purpose: unknown fields are
rejected (a misspelled ``timout`` must not run a command without its limit), booleans are
not numbers, and no string may carry a NUL byte.

``POST /jobs`` takes one more field, ``callback_url`` (`parse_job_request`): an absolute
http or https URL of printable ASCII matching `URL_PATTERN`, without user info (a password
would be kept with the job and shown with it), at most `MAX_URL_LENGTH` characters; its
host must be on ``--callback-allow`` (403 ``callback_not_allowed``), checked after every
field is valid.

Numbers of any size are a 400, never a crash: an integer literal of more than
`MAX_INT_DIGITS` digits is ``invalid_json`` (converting it would cost time quadratic in its
length, which is why Python refuses such strings by default), and a number too large for
its field, however written, is ``invalid_field``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from taskrunner.errors import CallbackNotAllowed, InvalidField, InvalidJSON, UnknownField
from taskrunner.jobs.callbacks import CallbackHosts, shown_host
from taskrunner.jsonkind import json_kind
from taskrunner.process.engine import CommandSpec

FIELDS = ("args", "timeout", "stdin", "env", "cwd")
JOB_FIELDS = (*FIELDS, "callback_url")
ACTION_FIELDS = ("params", "timeout", "stdin")
ACTION_JOB_FIELDS = (*ACTION_FIELDS, "callback_url")

MAX_URL_LENGTH = 2048
"""Longest ``callback_url`` accepted, as browsers and most servers take."""

_PORT = "[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]"
URL_PATTERN = (r"https?://([A-Za-z0-9._~!$&'()*+,;=%-]+|\[[0-9A-Fa-f:.]+\])"
               rf"(:({_PORT}))?([/?#][!-~]*)?")
"""What a ``callback_url`` must be, whole: http(s), a host (a name, an IPv4 address, or an
IPv6 one in brackets) with no user info, an optional port up to 65535, then any printable
ASCII. openapi.json's pattern for it is this one, anchored: the document and the
validation accept the same URLs, which schemathesis checks both ways."""

MAX_INT_DIGITS = 4300
"""Longest integer literal accepted anywhere in a body: Python's default limit for
int-from-string conversion, enforced here whatever the interpreter's setting."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidJSON(f"duplicate key {key!r} in a JSON object")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not valid JSON")


def _parse_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits <= MAX_INT_DIGITS:
        try:
            return int(text)
        except ValueError:  # an interpreter set to a lower limit (PYTHONINTMAXSTRDIGITS)
            pass
    raise InvalidJSON(f"body has an integer of {digits} digits; at most {MAX_INT_DIGITS} "
                      "digits are accepted")


def decode_json_object(body: bytes) -> dict[str, Any]:
    """Decode a body that must be a UTF-8 JSON object; raise `InvalidJSON` otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates,
                           parse_constant=_reject_constant, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"body is not valid JSON: {exc.msg} at line {exc.lineno} "
                          f"column {exc.colno}") from None
    except RecursionError:
        raise InvalidJSON("body is nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidJSON(f"body must be a JSON object, not {json_kind(value)}")
    return value



def _check_string(field: str, value: object, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidField(f"{field} must be a string, not {json_kind(value)}")
    if "\x00" in value:
        raise InvalidField(f"{field} must not contain a NUL byte")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800" in the JSON
            raise InvalidField(f"{field} is not valid Unicode (lone surrogate at index "
                               f"{exc.start})") from None
    if not allow_empty and not value:
        raise InvalidField(f"{field} must not be empty")
    return value


def _parse_args(value: object) -> list[str]:
    if not isinstance(value, list):
        raise InvalidField(f"args must be an array of strings, not {json_kind(value)}")
    if not value:
        raise InvalidField("args must not be empty: it names the program to run")
    args = [_check_string(f"args[{i}]", item) for i, item in enumerate(value)]
    if not args[0]:
        raise InvalidField("args[0] must not be empty: it names the program to run")
    return args


def _parse_timeout(value: object, max_timeout: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidField(f"timeout must be a number of seconds, not {json_kind(value)}")
    # Compared before float(): an int beyond 1.8e308 cannot become one (OverflowError), and
    # Python compares an int with a float exactly.
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise InvalidField(f"timeout must be a finite number greater than 0, not "
                           f"{_shown(value)}")
    if value > max_timeout:
        raise InvalidField(f"timeout {_shown(value)} is above the maximum of {max_timeout:g} "
                           "seconds")
    return float(value)


def _shown(value: int | float) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"{text[:12]}... ({len(text)} characters)"


def _parse_env(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidField(f"env must be an object of strings, not {json_kind(value)}")
    env: dict[str, str] = {}
    for key, item in value.items():
        _check_string("env key", key, allow_empty=False)
        if "=" in key:
            raise InvalidField(f"env key {key!r} must not contain '='")
        env[key] = _check_string(f"env[{key!r}]", item)
    return env


def _parse_callback_url(value: object) -> str:
    url = _check_string("callback_url", value, allow_empty=False)
    if len(url) > MAX_URL_LENGTH:
        raise InvalidField(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    if not re.fullmatch(URL_PATTERN, url):
        raise InvalidField(f"callback_url must be an http or https URL (http[s]://HOST[:PORT]"
                           "/PATH, printable ASCII, no user info), not "
                           f"{_shown_url(url)}")
    return url


def _shown_url(url: str) -> str:
    return repr(url if len(url) <= 80 else url[:60] + "...")


def _refuse_unknown(fields: dict[str, Any], known: tuple[str, ...], hint: str = "") -> None:
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise UnknownField(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"known fields are {', '.join(known)}{hint}")


def _given(fields: dict[str, Any]) -> dict[str, Any]:
    # An optional field given as null means the same as leaving it out.
    return {name: value for name, value in fields.items() if value is not None}


def _timeout_and_stdin(given: dict[str, Any], default_timeout: float,
                       max_timeout: float) -> tuple[float, str | None]:
    timeout = default_timeout
    if "timeout" in given:
        timeout = _parse_timeout(given["timeout"], max_timeout)
    stdin = _check_string("stdin", given["stdin"]) if "stdin" in given else None
    return timeout, stdin


def _parse_fields(body: bytes, known: tuple[str, ...], default_timeout: float,
                  max_timeout: float) -> tuple[dict[str, Any], CommandSpec]:
    fields = decode_json_object(body)
    _refuse_unknown(fields, known)
    if "args" not in fields:
        raise InvalidField("args is required: an array of strings naming the command")
    args = _parse_args(fields["args"])
    given = _given(fields)
    timeout, stdin = _timeout_and_stdin(given, default_timeout, max_timeout)
    env = _parse_env(given["env"]) if "env" in given else None
    cwd = _check_string("cwd", given["cwd"], allow_empty=False) if "cwd" in given else None
    return given, CommandSpec(args=args, timeout=timeout, stdin=stdin, env=env, cwd=cwd)


def parse_run_request(body: bytes, *, default_timeout: float, max_timeout: float) -> CommandSpec:
    """Validate a request body and return the command it asks for."""
    _, spec = _parse_fields(body, FIELDS, default_timeout, max_timeout)
    return spec


def parse_job_request(body: bytes, *, default_timeout: float, max_timeout: float,
                      callback_hosts: CallbackHosts) -> tuple[CommandSpec, str | None]:
    """Validate a ``POST /jobs`` body: the command it asks for, and its ``callback_url``
    (None without one); `CallbackNotAllowed` if that URL's host is off the list."""
    given, spec = _parse_fields(body, JOB_FIELDS, default_timeout, max_timeout)
    return spec, _callback(given, callback_hosts)


def _callback(given: dict[str, Any], callback_hosts: CallbackHosts | None) -> str | None:
    if "callback_url" not in given:
        return None
    url = _parse_callback_url(given["callback_url"])
    if not callback_hosts:
        raise CallbackNotAllowed("this instance sends no callbacks (no --callback-allow)")
    try:
        permitted = callback_hosts.permits(url)
    except ValueError:  # a bracketed host that is no IPv6 address: on no list
        raise CallbackNotAllowed(f"callback_url host of {_shown_url(url)} is not on this "
                                 "instance's --callback-allow") from None
    if not permitted:
        raise CallbackNotAllowed(f"callback_url host {shown_host(url)} is not on this "
                                 "instance's --callback-allow")
    return url


@dataclass(frozen=True)
class ActionRequest:
    """A valid body of ``POST /actions/<name>`` (and ``/jobs``): the parameters as sent
    (the action checks them), and how to run it."""

    params: Any
    timeout: float
    stdin: str | None
    callback_url: str | None = None


def parse_action_request(body: bytes, *, default_timeout: float, max_timeout: float,
                         callback_hosts: CallbackHosts | None = None) -> ActionRequest:
    """Validate an action's request body: ``params``, ``timeout`` (at most ``max_timeout``,
    the action's cap), ``stdin``, and with ``callback_hosts`` (a job) ``callback_url``. Never
    ``args``, ``env`` or ``cwd``: the operator's file fixes those."""
    known = ACTION_JOB_FIELDS if callback_hosts is not None else ACTION_FIELDS
    fields = decode_json_object(body) if body else {}
    _refuse_unknown(fields, known, " (an action's command is fixed)")
    given = _given(fields)
    timeout, stdin = _timeout_and_stdin(given, default_timeout, max_timeout)
    return ActionRequest(given.get("params"), timeout, stdin, _callback(given, callback_hosts))
