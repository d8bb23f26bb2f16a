"""Every bad input gets a clear JSON error with the right 4xx, and harms nothing."""

import asyncio
import json
import os
import stat

import pytest
from conftest import with_config

from taskrunner.config import Config

BAD_BODIES = [
    # (raw body, expected error code, a word the message must contain)
    (b"not json", "invalid_json", "JSON"),
    (b"", "invalid_json", "JSON"),
    (b"\xff\xfe{}", "invalid_json", "UTF-8"),
    (b"[1, 2]", "invalid_json", "object"),
    (b'"args"', "invalid_json", "object"),
    (b'{"args": ["true"], "args": ["false"]}', "invalid_json", "duplicate"),
    (b'{"args": ["true"], "timeout": NaN}', "invalid_json", "NaN"),
    (b'{"args": ["true"], "timeout": Infinity}', "invalid_json", "Infinity"),
    (b"{}", "invalid_field", "args"),
    (b'{"args": []}', "invalid_field", "args"),
    (b'{"args": "ls -l"}', "invalid_field", "array"),
    (b'{"args": ["ls", 1]}', "invalid_field", "args[1]"),
    (b'{"args": [null]}', "invalid_field", "args[0]"),
    (b'{"args": [""]}', "invalid_field", "args[0]"),
    (b'{"args": ["ec\\u0000ho"]}', "invalid_field", "NUL"),
    (b'{"args": ["true"], "timeout": true}', "invalid_field", "timeout"),
    (b'{"args": ["true"], "timeout": "5"}', "invalid_field", "timeout"),
    (b'{"args": ["true"], "timeout": 0}', "invalid_field", "greater than 0"),
    (b'{"args": ["true"], "timeout": -1}', "invalid_field", "greater than 0"),
    (b'{"args": ["true"], "timeout": 1e400}', "invalid_field", "finite"),
    (b'{"args": ["true"], "timeout": 3601}', "invalid_field", "maximum"),
    (b'{"args": ["true"], "stdin": 5}', "invalid_field", "stdin"),
    (b'{"args": ["true"], "stdin": "a\\u0000b"}', "invalid_field", "NUL"),
    (b'{"args": ["true"], "env": ["A=1"]}', "invalid_field", "env"),
    (b'{"args": ["true"], "env": {"A": 1}}', "invalid_field", "env"),
    (b'{"args": ["true"], "env": {"A=B": "1"}}', "invalid_field", "="),
    (b'{"args": ["true"], "env": {"": "1"}}', "invalid_field", "empty"),
    (b'{"args": ["true"], "env": {"A": "\\u0000"}}', "invalid_field", "NUL"),
    (b'{"args": ["true"], "cwd": 7}', "invalid_field", "cwd"),
    (b'{"args": ["true"], "cwd": ""}', "invalid_field", "cwd"),
    (b'{"args": ["true"], "timout": 5}', "unknown_field", "timout"),
    (b'{"args": ["true"], "shell": true}', "unknown_field", "shell"),
]


@pytest.mark.parametrize("raw,error,word", BAD_BODIES)
@pytest.mark.gen_test
async def test_bad_request_bodies_get_a_400_that_says_why(instance, raw, error, word):
    response = await instance.request("POST", "/run", raw=raw)
    assert response.code == 400
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body)
    assert body["error"] == error
    assert word.lower() in body["message"].lower()
    assert instance.ctx.engine.running == 0


HUGE_NUMBERS = [
    # Each of these was an "internal" 500: float() overflows past 308 digits, and Python's
    # JSON parser refuses integers of more than 4,300 digits with a ValueError.
    (b'{"args": ["true"], "timeout": 1' + b"0" * 400 + b"}", "invalid_field", "maximum"),
    (b'{"args": ["true"], "timeout": -1' + b"0" * 400 + b"}", "invalid_field",
     "greater than 0"),
    (b'{"args": ["true"], "timeout": 1' + b"0" * 4299 + b"}", "invalid_field", "maximum"),
    (b'{"args": ["true"], "timeout": 1' + b"0" * 4300 + b"}", "invalid_json", "4301 digits"),
    (b'{"args": ["true"], "timeout": 1' + b"0" * 100_000 + b"}", "invalid_json", "digits"),
    (b'{"args": ["true", 1' + b"0" * 400 + b"]}", "invalid_field", "args[1]"),
    (b'{"args": ["true", 1' + b"0" * 5000 + b"]}", "invalid_json", "digits"),
    (b'{"args": ["true"], "env": {"A": [1' + b"0" * 5000 + b"]}}", "invalid_json", "digits"),
    (b'{"args": ["true"], "timeout": 1.5e99999}', "invalid_field", "finite"),
    (b'{"args": ["true"], "timeout": 1' + b"0" * 400 + b".5}", "invalid_field", "finite"),
]


@pytest.mark.parametrize("path", ["/run", "/jobs"])
@pytest.mark.parametrize("raw,error,word", HUGE_NUMBERS)
@pytest.mark.gen_test
async def test_huge_numbers_are_a_400_on_every_command_route(instance, path, raw, error, word):
    response = await instance.request("POST", path, raw=raw)
    body = json.loads(response.body)
    assert (response.code, body["error"]) == (400, error), body
    assert word in body["message"] and len(body["message"]) < 200
    assert instance.ctx.engine.running == 0


@pytest.mark.parametrize("length", [b"9" * 20, b"9" * 5000, "\u00b2".encode("latin-1")])
@pytest.mark.gen_test
async def test_an_absurd_content_length_is_not_a_500(instance, length):
    reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
    try:
        writer.write(b"POST /run HTTP/1.1\r\nHost: localhost\r\nContent-Length: " + length
                     + b"\r\n\r\n{}")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
    finally:
        writer.close()
    # A length of digits is larger than any limit (413); "²" is not a length (400).
    assert head.split()[1] in (b"413", b"400"), head
    response = await instance.request("GET", "/healthz")
    assert response.code == 200


@pytest.mark.gen_test
async def test_unknown_field_does_not_run_the_command(instance, tmp_path):
    marker = tmp_path / "ran"
    response = await instance.request(
        "POST", "/run", {"args": ["touch", str(marker)], "timout": 1})
    assert response.code == 400
    assert not marker.exists()


@with_config(max_body=100)
@pytest.mark.gen_test
async def test_body_over_the_limit_is_a_413_not_a_dropped_connection(instance):
    response = await instance.request("POST", "/run", {"args": ["echo", "x" * 200]})
    assert response.code == 413
    assert json.loads(response.body)["error"] == "body_too_large"
    # A body just under the limit still works.
    response = await instance.request("POST", "/run", {"args": ["echo", "x" * 50]})
    assert response.code == 200


def body_of(size):
    """A valid command body of exactly ``size`` bytes."""
    body = b'{"args": ["true"], "stdin": ""}'
    return body[:-2] + b"x" * (size - len(body)) + body[-2:]


@with_config(max_body=100)
@pytest.mark.parametrize("path,ok", [("/run", 200), ("/jobs", 202)])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.gen_test
async def test_exactly_max_body_bytes_are_accepted_and_one_more_is_a_413(
        instance, path, ok, chunked):
    for size, expected in [(100, ok), (101, 413), (99, ok), (200, 413)]:
        raw = body_of(size)
        assert len(raw) == size
        if chunked:  # no declared length: the limit is enforced on the bytes as they come
            reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
            try:
                writer.write(f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n".encode())
                for i in range(0, size, 30):
                    piece = raw[i:i + 30]
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
            finally:
                writer.close()
            code = int(head.split()[1])
        else:
            code = (await instance.request("POST", path, raw=raw)).code
        assert code == expected, (size, code)


@with_config(max_body=100)
@pytest.mark.parametrize("path", ["/run", "/jobs"])
@pytest.mark.gen_test
async def test_a_declared_length_of_max_body_plus_one_is_a_413_before_the_body(instance, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
    try:  # the headers only: the answer must not wait for a body it will refuse
        writer.write(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 101\r\n\r\n"
                     .encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413")


@with_config(max_body=100)
@pytest.mark.gen_test
async def test_chunked_body_over_the_limit_is_a_413(instance):
    reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
    writer.write(b"POST /run HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(5):
        writer.write(b"32\r\n" + b"x" * 50 + b"\r\n")
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 413")
    writer.close()


@pytest.mark.gen_test
async def test_missing_program_is_a_422_naming_it(instance):
    response = await instance.request("POST", "/run", {"args": ["no-such-program-xyz"]})
    assert response.code == 422
    body = json.loads(response.body)
    assert body["error"] == "spawn_failed"
    assert "no-such-program-xyz" in body["message"]
    assert "No such file" in body["message"]


@pytest.mark.parametrize("config", [Config(port=0, grace=2.0),
                                    Config(port=0, grace=2.0, limit_nofile=1024)],
                         ids=["spawn", "prlimit-wrapper"])
@pytest.mark.gen_test
async def test_not_executable_is_a_422(instance, tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    os.chmod(script, stat.S_IRUSR | stat.S_IWUSR)
    response = await instance.request("POST", "/run", {"args": [str(script)]})
    # No skip as root: root may execute a file only if some execute bit is set, so a 200
    # here would mean the file was run some other way (e.g. through a shell).
    assert response.code == 422
    assert "Permission denied" in json.loads(response.body)["message"]


@pytest.mark.gen_test
async def test_missing_cwd_is_a_422_naming_the_directory(instance, tmp_path):
    missing = str(tmp_path / "nope")
    response = await instance.request("POST", "/run", {"args": ["true"], "cwd": missing})
    assert response.code == 422
    message = json.loads(response.body)["message"]
    assert missing in message and "true" in message


ROUTES = [("/run", "POST"), ("/healthz", "GET")]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.gen_test
async def test_every_error_has_the_same_json_shape(instance, method):
    """Walk every route with every method plus an unknown path: errors are always JSON."""
    for path, allowed in [*ROUTES, ("/nope", None)]:
        response = await instance.request(method, path, raw=b"{")
        if method == allowed:
            continue
        assert response.code == (405 if allowed else 404), (method, path)
        body = json.loads(response.body)
        assert set(body) == {"error", "message"}
        assert body["error"] == ("method_not_allowed" if allowed else "not_found")
        assert "Traceback" not in body["message"]


@pytest.mark.gen_test
async def test_malformed_http_does_not_kill_the_instance(instance):
    reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
    writer.write(b"POST /run HTTP/1.1\r\nContent-Length: banana\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(reader.read(), 10)
    writer.close()
    response = await instance.request("GET", "/healthz")
    assert response.code == 200


@with_config(body_timeout=0.5)
@pytest.mark.gen_test
async def test_a_body_that_does_not_arrive_in_time_gets_a_408_and_runs_nothing(instance):
    reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
    writer.write(b"POST /run HTTP/1.1\r\nHost: [::1]\r\nContent-Length: 100\r\n\r\n{\"args\": [")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)  # the server closes after answering
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"] == "body_timeout"
    assert instance.ctx.engine.running == 0
