"""Every private attribute of Tornado that taskrunner.listener relies on, named, each
checked against the installed Tornado: a release that moves one fails here, loudly, with
the attribute and the version, before anything breaks in production.

pyproject.toml bounds Tornado below its next minor release for this reason; admit a new
minor once this file passes on it (and the listener's tests do).
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import pathlib
import re
import socket

import pytest
import tornado
from tornado.httpserver import HTTPServer
from tornado.iostream import BaseIOStream, IOStream, UnsatisfiableReadError
from tornado.tcpserver import TCPServer

import taskrunner.listener

LISTENER = pathlib.Path(taskrunner.listener.__file__).parent

# Each private attribute, the Tornado class that has it, and what the listener does with it.
RELIED_ON = {
    "_handle_connection": (TCPServer, "an accepted connection's entry, overridden to make "
                           "its stream (ClientStream) and, over HTTPS, its doorway"),
    "_sockets": (TCPServer, "the listening sockets by fd, filled by add_sockets"),
    "_handlers": (TCPServer, "by fd, what stops accepting; stop() pops and calls it"),
    "_connections": (HTTPServer, "the open HTTP1ServerConnections, counted for the cap "
                     "and the drain"),
}


def moved(name: str, why: str) -> str:
    owner, use = RELIED_ON[name]
    return (f"Tornado {tornado.version}: {owner.__name__}.{name} {why}. taskrunner.listener "
            f"relies on it ({use}); mend the listener before admitting this release in "
            "pyproject.toml")


def test_tcpserver_handle_connection_takes_the_accepted_socket_and_address():
    method = getattr(TCPServer, "_handle_connection", None)
    assert callable(method), moved("_handle_connection", "is gone")
    assert list(inspect.signature(method).parameters) == ["self", "connection", "address"], \
        moved("_handle_connection", f"now takes {inspect.signature(method)}")


def test_tcpserver_stop_closes_the_sockets_and_calls_the_handlers_add_sockets_filled():
    server = TCPServer()
    for name in ("_sockets", "_handlers"):
        assert isinstance(getattr(server, name, None), dict), moved(name, "is not a dict")
    sock = socket.socket()
    stopped = []
    # What the listener's add_sockets does instead of Tornado's.
    server._sockets[sock.fileno()] = sock
    server._handlers[sock.fileno()] = lambda: stopped.append(True)
    server.stop()
    assert stopped == [True], moved("_handlers", "is no longer called by stop()")
    assert sock.fileno() == -1, moved("_sockets", "is no longer closed by stop()")


def test_httpserver_connections_hold_the_open_connections():
    server = HTTPServer(lambda request: None)
    connections = getattr(server, "_connections", None)
    assert isinstance(connections, set), moved("_connections", "is not a set")
    marker = object()
    connections.add(marker)
    server.on_close(marker)
    assert marker not in connections, moved("_connections", "is not what on_close empties")


def test_the_stream_hooks_the_lingering_close_takes_over_are_there():
    # Public, but only documented for subclasses: close_fd is called once by close(), and
    # IOStream's leaves socket None; the header limit is an UnsatisfiableReadError.
    assert "close_fd" in vars(BaseIOStream), f"Tornado {tornado.version}: no close_fd"
    assert issubclass(UnsatisfiableReadError, Exception)

    class Recording(IOStream):
        calls = 0

        def close_fd(self) -> None:
            Recording.calls += 1
            super().close_fd()

    async def close_one() -> IOStream:
        ours, theirs = socket.socketpair()
        theirs.close()
        stream = Recording(ours)
        stream.close()
        stream.close()
        return stream

    stream = asyncio.run(close_one())
    assert Recording.calls == 1, f"Tornado {tornado.version}: close() calls close_fd " \
        f"{Recording.calls} times"
    assert stream.socket is None, f"Tornado {tornado.version}: IOStream.close_fd keeps " \
        "its socket"


def _private_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
    return {name for name in names if re.fullmatch(r"_[a-z][a-z0-9_]*", name)}


@pytest.mark.parametrize("module", sorted(p.stem for p in LISTENER.glob("*.py")))
def test_every_private_name_the_listener_shares_with_tornado_is_named_here(module):
    # A listener class that subclasses Tornado's shares its namespace: a private name of
    # ours that one of its Tornado ancestors also has is one we use, or one we clobber.
    # Either way it must be named above, and checked.
    loaded = importlib.import_module(f"taskrunner.listener.{module}")
    tree = ast.parse((LISTENER / f"{module}.py").read_text())
    for node in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        ancestors = [klass for klass in getattr(loaded, node.name).__mro__
                     if klass.__module__.startswith("tornado.")]
        source = "\n".join(inspect.getsource(klass) for klass in ancestors)
        for name in _private_names(node):
            if re.search(rf"(\.|def ){name}\b", source):
                assert name in RELIED_ON, (
                    f"{module}.py: {node.name} uses {name}, which Tornado "
                    f"{tornado.version}'s {', '.join(k.__name__ for k in ancestors)} has "
                    "too: name it in RELIED_ON and check it")
