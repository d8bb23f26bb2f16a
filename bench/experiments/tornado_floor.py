"""The least a Tornado server can do for W1: a yardstick, not a product (serves PORT).

Per ``POST /run`` it parses the JSON body, starts ``args`` with ``posix_spawnp`` in a
session of its own with stdout/stderr pipes, waits for the pidfd on the loop, reads the
pipes and answers the result as JSON: the system calls taskrunner makes for a command, and
none of its validation, limits, admission, logging, metrics, timeouts or cleanup. Its
stdout and stderr are read only after the command exits, so keep outputs under a pipe's
64 KiB (W1's ``true`` writes nothing). It measures how far a Tornado-based server can go on
this machine at all: run one on a port and four behind the stack's nginx (stop the stack's
instances with ``supervisorctl stop 'taskrunner:*'`` and start this on 8885-8888 instead),
then W1 at both and at webhook, interleaved. Serves until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os

import tornado.httpserver
import tornado.web
import uvloop


def read_all(fd: int) -> bytes:
    """Everything left in a non-blocking pipe whose writer has exited; closes it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


class Run(tornado.web.RequestHandler):
    async def post(self) -> None:
        args = json.loads(self.request.body)["args"]
        out_r, out_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        err_r, err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        pid = os.posix_spawnp(args[0], args, os.environ, setsid=True, file_actions=[
            (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)])
        os.close(out_w)
        os.close(err_w)
        pidfd = os.pidfd_open(pid)
        loop = asyncio.get_running_loop()
        started = loop.time()
        exited = loop.create_future()
        loop.add_reader(pidfd, exited.set_result, None)
        await exited
        loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({
            "status": os.waitstatus_to_exitcode(status),
            "stdout": read_all(out_r).decode(errors="replace"),
            "stderr": read_all(err_r).decode(errors="replace"),
            "timed_out": False,
            "duration": loop.time() - started,
        }))


async def serve(port: int) -> None:
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/run", Run)]))
    server.listen(port, "127.0.0.1")
    await asyncio.Event().wait()



def main(argv: list[str]) -> int:
    """Serve on 127.0.0.1:PORT until interrupted."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment tornado_floor",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("port", type=int, metavar="PORT")
    port = ap.parse_args(argv).port
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
        uvloop.run(serve(port))
    return 0
