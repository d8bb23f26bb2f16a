"""The listener through its own API, without taskrunner's handlers: a `CappedHTTPServer`
in front of a one-route Tornado application. Who is a stranger is the caller's decision
(``trusts``); the 431 and the drain are the listener's alone."""

import asyncio
import contextlib
import json

import pytest
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from taskrunner.listener.connections import IDLE_GRACE, CappedHTTPServer
from taskrunner.listener.streams import MAX_HEADER_FIELDS


class Hello(RequestHandler):
    def get(self) -> None:
        self.write("hello")


@contextlib.asynccontextmanager
async def served(**kwargs):
    server = CappedHTTPServer(Application([(r"/", Hello)]), **kwargs)
    [sock] = bind_sockets(0, "127.0.0.1")
    server.add_sockets([sock])
    try:
        yield server, sock.getsockname()[1]
    finally:
        server.stop()
        await server.close_all_connections()


async def connect(port, opened):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened.append(writer)
    return reader, writer


async def get(connection, headers=b""):
    """One ``GET /`` on a kept-alive connection: (status, body)."""
    reader, writer = connection
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return int(head.split()[1]), await reader.readexactly(length)


async def closed(connection, seconds):
    try:
        return await asyncio.wait_for(connection[0].read(1), seconds) == b""
    except TimeoutError:
        return False


def with_key(headers):
    return headers.get("X-Key") == "good"


@pytest.mark.parametrize("trusts,shed", [(with_key, "stranger"), (None, "known")],
                         ids=["trusts", "everyone-trusted"])
@pytest.mark.gen_test(timeout=30)
async def test_at_the_cap_trusts_decides_which_idle_connection_goes(trusts, shed):
    opened = []
    options = {"max_connections": 2} | ({"trusts": trusts} if trusts else {})
    async with served(**options) as (server, port):
        try:
            known = await connect(port, opened)
            assert await get(known, b"X-Key: good\r\n") == (200, b"hello")  # idle longest
            stranger = await connect(port, opened)
            assert await get(stranger) == (200, b"hello")
            assert server.strangers == (1 if trusts else 0)
            await asyncio.sleep(IDLE_GRACE + 0.1)  # both may go now
            newcomer = await connect(port, opened)
            assert await get(newcomer) == (200, b"hello")
            gone, kept = (stranger, known) if shed == "stranger" else (known, stranger)
            assert await closed(gone, 5)
            assert not await closed(kept, 0.2) and (await get(kept))[0] == 200
            assert server.shed_total == 1 and server.held_connections == 2
        finally:
            for writer in opened:
                writer.close()


@pytest.mark.gen_test(timeout=30)
async def test_too_many_header_fields_get_the_listeners_json_431():
    opened = []
    async with served() as (_, port):
        try:
            flood = b"".join(b"X-F-%d: v\r\n" % i for i in range(MAX_HEADER_FIELDS))
            status, body = await get(await connect(port, opened), flood)
            assert status == 431
            assert json.loads(body)["error"] == "headers_too_large"
            assert (await get(await connect(port, opened)))[0] == 200
        finally:
            for writer in opened:
                writer.close()


@pytest.mark.gen_test(timeout=30)
async def test_stop_accepting_serves_the_open_connections_then_reports_none_left():
    opened = []
    async with served() as (server, port):
        try:
            kept = await connect(port, opened)
            assert (await get(kept))[0] == 200
            server.stop_accepting()
            with pytest.raises(ConnectionRefusedError):
                await connect(port, opened)
            assert (await get(kept))[0] == 200  # still served
            assert server.open_connections == 1
            assert not await server.wait_no_connections(0.2)
            kept[1].close()
            assert await server.wait_no_connections(5)
        finally:
            for writer in opened:
                writer.close()
