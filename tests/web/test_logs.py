import asyncio
import io
import json
import logging

import pytest
from helpers import access_lines

from taskrunner.cli import parse_config
from taskrunner.logs import setup_logging


@pytest.mark.gen_test
async def test_access_log_line_has_request_id_client_program_exit_and_durations(
        instance, log_stream):
    response = await instance.request("POST", "/run", {"args": ["sh", "-c", "exit 3"]},
                                      headers={"X-Request-Id": "abc-123",
                                               "X-Real-IP": "203.0.113.7"})
    assert response.code == 200
    assert response.headers["X-Request-Id"] == "abc-123"
    (line,) = access_lines(log_stream)
    assert line["request_id"] == "abc-123"
    assert line["client"] == "203.0.113.7"  # passed on by the proxy
    assert (line["method"], line["path"], line["status"]) == ("POST", "/run", 200)
    assert (line["program"], line["exit_status"]) == ("sh", 3)
    assert line["command_ms"] >= 0 and line["duration_ms"] >= line["command_ms"]
    assert "rid=abc-123" in line["message"] and "program=sh exit=3" in line["message"]


@pytest.mark.gen_test
async def test_a_missing_or_unusable_request_id_is_replaced(instance, log_stream):
    first = await instance.request("GET", "/healthz")
    second = await instance.request("GET", "/nope", headers={"X-Request-Id": "has space"})
    assert second.code == 404
    ids = [first.headers["X-Request-Id"], second.headers["X-Request-Id"]]
    assert all(len(i) == 32 for i in ids) and ids[0] != ids[1]
    assert [line["request_id"] for line in access_lines(log_stream)] == ids


def test_log_format_must_be_text_or_json(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--log-format", "xml"])
    assert "log_format must be text or json" in capsys.readouterr().err


def test_text_format_is_the_default():
    assert parse_config([]).log_format == "text"


@pytest.mark.gen_test
async def test_log_lines_are_batched_but_written_within_a_tenth_of_a_second(
        instance, log_stream):
    await instance.request("GET", "/healthz")
    await asyncio.sleep(0.3)
    assert [line["path"] for line in
            map(json.loads, log_stream.getvalue().splitlines())
            if line["logger"] == "taskrunner.access"] == ["/healthz"]
    logging.getLogger("taskrunner.test").warning("at once")
    assert "at once" in log_stream.getvalue()


@pytest.mark.parametrize(("headers", "client"), [
    ({"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}, "203.0.113.9"),
    ({"X-Real-IP": "2001:db8::7", "X-Forwarded-For": "203.0.113.9"}, "2001:db8::7"),
    ({"X-Real-IP": "not an address"}, "127.0.0.1"),
    ({"X-Real-IP": "999.1.1.1"}, "127.0.0.1"),
    ({}, "127.0.0.1"),
], ids=["forwarded-for", "real-ip-first", "junk", "bad-ipv4", "direct"])
@pytest.mark.gen_test
async def test_client_address_comes_from_the_proxy_headers_when_they_hold_one(
        instance, log_stream, headers, client):
    response = await instance.request("POST", "/run", {"args": ["true"]}, headers=headers)
    assert response.code == 200
    (line,) = access_lines(log_stream)
    assert line["client"] == client


FORGED = "x\n2026-01-01 00:00:00,000 INFO taskrunner.access POST /run 200 1.0ms\r\x1b[2J\u2028y"


@pytest.fixture
def text_stream():
    """Capture every log record in the text format; remove the handler afterwards."""
    stream = io.StringIO()
    handler = setup_logging("text", stream=stream)
    yield stream
    logging.getLogger().removeHandler(handler)


def flushed(stream):
    for handler in logging.getLogger().handlers:
        handler.flush()
    return stream.getvalue()


@pytest.mark.gen_test
async def test_control_characters_in_args0_cannot_forge_a_text_log_line(instance, text_stream):
    response = await instance.request("POST", "/run", {"args": [FORGED]})
    assert response.code == 422
    lines = [line for line in flushed(text_stream).splitlines() if "taskrunner.access" in line]
    assert len(lines) == 1, lines  # the forged record is not a line of its own
    (line,) = lines
    assert line.startswith(tuple("0123456789")) and " POST /run 422 " in line
    assert "\x1b" not in line and "\r" not in line and "\u2028" not in line
    assert 'program="x\\n2026-01-01 00:00:00,000 INFO' in line  # quoted: it has spaces
    assert "\\r\\x1b[2J\\u2028y\" exit=- cmd=-" in line


@pytest.mark.gen_test
async def test_control_characters_are_escaped_in_every_json_field(instance, log_stream):
    response = await instance.request("POST", "/run", {"args": [FORGED]})
    assert response.code == 422
    for record in map(json.loads, flushed(log_stream).splitlines()):
        for key, value in record.items():  # not even JSON-escaped: decoded, still one line
            assert not isinstance(value, str) or value.isprintable(), (key, value)
    (line,) = access_lines(log_stream)
    assert line["program"] == FORGED.replace("\n", "\\n").replace("\r", "\\r").replace(
        "\x1b", "\\x1b").replace("\u2028", "\\u2028")
    assert "\n" not in line["message"] and "\\x1b[2J" in line["message"]


@pytest.mark.parametrize("program,shown", [
    ("my prog exit=0", 'program="my prog exit=0" exit=-'),
    ('a"b', 'program="a\\"b" exit=-'),
    ("a\\nb", 'program="a\\\\nb" exit=-'),  # a backslash sent: told from an escaped newline
    ("a\nb", "program=a\\nb exit=-"),
])
@pytest.mark.gen_test
async def test_a_program_name_is_one_field_of_the_text_access_line(
        instance, text_stream, program, shown):
    response = await instance.request("POST", "/run", {"args": [program]})
    assert response.code == 422
    (line,) = [line for line in flushed(text_stream).splitlines() if "taskrunner.access" in line]
    assert shown in line


def test_a_traceback_keeps_its_lines_indented_and_escaped(text_stream):
    try:
        raise ValueError("bad\n2026-01-01 00:00:00,000 INFO forged\x1b[0m")
    except ValueError:
        logging.getLogger("taskrunner.test").exception("failed on %s", "a\rb")
    lines = flushed(text_stream).splitlines()
    assert lines[0].endswith("ERROR taskrunner.test failed on a\\rb")
    assert len(lines) > 3 and all(line.startswith("    ") for line in lines[1:])
    assert "\x1b" not in "".join(lines) and "\\x1b[0m" in lines[-1]
