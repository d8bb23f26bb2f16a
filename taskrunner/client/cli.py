"""``trun``: taskrunner from the command line, as if the command ran here.

Only builds requests from the arguments and shows the answers; the work is the library's
(aio.py) and attach.py's. Reads ``TASKRUNNER_URL`` and ``TASKRUNNER_TOKEN`` (``--url``,
``--token`` and ``--ca-file`` go before or after the command's name). Every failure is one
line on stderr naming its cause, never a traceback; the exit statuses are `EXIT_*` below and
in docs/client.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from taskrunner.client import errors
from taskrunner.client.aio import AsyncClient, AsyncJob
from taskrunner.client.attach import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, Attached, stdio
from taskrunner.client.models import JobInfo
from taskrunner.client.views import job_table, usage_line
from taskrunner.client.visible import visible
from taskrunner.completion import add_completion_flag

DEFAULT_URL = "http://127.0.0.1:8885"
#: trun itself failed: no instance there, a bad URL or token, the request refused.
EXIT_FAILED = 125
#: The command could not start: not found, not executable, not allowed, a job ``failed``.
EXIT_CANNOT_START = 126
#: ``health``: the instance answers but is degraded.
EXIT_DEGRADED = 1

Command = Callable[[AsyncClient, argparse.Namespace], Coroutine[Any, Any, int]]


def _job_flags(command: argparse.ArgumentParser) -> None:
    # What starting a job takes, for run and do alike.
    command.add_argument("--stdin", metavar="FILE",
                         help="send FILE (- for this stdin) as its stdin")
    command.add_argument("--detach", "-d", action="store_true",
                         help="print the job id and return at once")
    command.add_argument("--usage", action="store_true",
                         help="when it has ended, say on stderr what it cost (CPU, memory, "
                              "wait)")
    command.add_argument("--retry", type=int, nargs="?", const=10, default=0, metavar="N",
                         help="when the instance is busy (429), try again after the "
                              "Retry-After it asks for, up to N times (default 10)")


def parser() -> argparse.ArgumentParser:
    """The command line's grammar."""
    top = argparse.ArgumentParser(
        prog="trun", description="Run commands on a taskrunner instance as if they ran here.",
        epilog=f"TASKRUNNER_URL (default {DEFAULT_URL}) and TASKRUNNER_TOKEN say where and as "
        "whom.")
    _where(top, None)
    add_completion_flag(top, "trun", EXIT_FAILED)
    sub = top.add_subparsers(dest="action", required=True, metavar="COMMAND")
    # Each command takes them as well, after its name (trun run --url ... -- cmd); its
    # defaults are SUPPRESS, so one given before the name is not reset by the sub-parser.
    where = argparse.ArgumentParser(add_help=False)
    _where(where, argparse.SUPPRESS)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[where], **kwargs)

    run = command("run", help="run a command, its output live, its exit status ours")
    run.add_argument("--timeout", type=float, metavar="S", help="seconds before it is killed")
    run.add_argument("--env", action="append", default=[], metavar="K=V",
                     help="an environment variable for the command (repeatable)")
    run.add_argument("--cwd", metavar="DIR", help="its working directory, on the instance")
    _job_flags(run)
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- PROGRAM ARGS...")
    run.set_defaults(handler=do_run)

    actions = command("actions", help="list the actions you may run, and their "
                             "parameters")
    actions.add_argument("--json", action="store_true", help="JSON for scripts, schemas "
                         "included")
    actions.set_defaults(handler=do_actions)

    do = command("do", help="run an action, its output live, its exit status ours")
    do.add_argument("--timeout", type=float, metavar="S", help="seconds before it is killed "
                    "(at most the action's own)")
    _job_flags(do)
    do.add_argument("name", metavar="NAME", help="the action")
    do.add_argument("params", nargs="*", metavar="KEY=VALUE",
                    help="a parameter (an array's: the key once per item)")
    do.set_defaults(handler=do_action)

    for name in ("ps", "jobs"):
        ps = command(name, help="list the jobs, newest first")
        ps.add_argument("--json", action="store_true", help="JSON for scripts")
        ps.add_argument("--state", help="only jobs in this state")
        ps.add_argument("--instance", help="only the jobs of this instance")
        ps.add_argument("--limit", type=int, default=100, help="most jobs shown (1-1000)")
        ps.set_defaults(handler=do_ps)

    logs = command("logs", help="a job's output")
    logs.add_argument("-f", "--follow", action="store_true", help="live, until the job ends")
    logs.add_argument("id")
    logs.set_defaults(handler=do_logs)

    wait = command("wait", help="wait for a job; its exit status is ours")
    wait.add_argument("--usage", action="store_true",
                      help="when it has ended, say on stderr what it cost (CPU, memory, wait)")
    wait.add_argument("id")
    wait.set_defaults(handler=do_wait)

    cancel = command("cancel", help="kill a job's command")
    cancel.add_argument("id")
    cancel.set_defaults(handler=do_cancel)

    health = command("health", help="is the instance up?")
    health.add_argument("--json", action="store_true", help="its whole /healthz answer")
    health.set_defaults(handler=do_health)
    return top


def _where(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--url", default=default,
                        help=f"the instance (default: $TASKRUNNER_URL, else {DEFAULT_URL})")
    parser.add_argument("--token", default=default,
                        help="the bearer token (default: $TASKRUNNER_TOKEN, which other users "
                             "of this machine cannot read in the process list)")
    parser.add_argument("--ca-file", default=default, metavar="FILE",
                        help="https: trust the certificates in FILE (PEM: the instance's own "
                             "self-signed one, or its CA's); default: certifi's bundle, or "
                             "$SSL_CERT_FILE")


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: parse, run one command, exit with its status."""
    sys.exit(run_cli(argv))


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Run ``trun ARGV`` and return its exit status."""
    args = parser().parse_args(argv)
    url = args.url or os.environ.get("TASKRUNNER_URL") or DEFAULT_URL
    token = args.token or os.environ.get("TASKRUNNER_TOKEN") or None
    handler: Command = args.handler
    try:
        # Before the event loop: asyncio's own SIGINT handler cannot interrupt a blocking
        # read, so a Ctrl-C while a terminal is read would wait for its end of file.
        args.stdin_text = _stdin(args.stdin) if args.action in ("run", "do") else None
        verify = _trusted(args.ca_file, url)
        return asyncio.run(_with_client(handler, url, token, verify, args))
    except errors.ClientError as e:
        _say(explain(e, url, token=token, ca_file=args.ca_file))
        return EXIT_FAILED
    except UsageError as e:
        _say(str(e))
        return 2
    except KeyboardInterrupt:  # a Ctrl-C before a job existed: nothing to cancel
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout's reader left (trun ps | head -1)
        _quiet_stdout()
        return EXIT_BROKEN_PIPE


def _quiet_stdout() -> None:
    # What is still buffered for the closed pipe would fail again at exit, with a message.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class UsageError(Exception):
    """Arguments that parse but cannot be used (a bad K=V, an unreadable stdin file)."""


async def _with_client(handler: Command, url: str, token: str | None,
                       verify: ssl.SSLContext | bool, args: argparse.Namespace) -> int:
    async with AsyncClient(url, token, retries=getattr(args, "retry", 0),
                           on_retry=_retrying, verify=verify) as client:
        return await handler(client, args)


def _trusted(ca_file: str | None, url: str) -> ssl.SSLContext | bool:
    # A context of its own for --ca-file (httpx takes no path since 0.28); without it, httpx
    # builds its default (certifi's bundle, or SSL_CERT_FILE). Checked here so a wrong path
    # is one line naming the flag, whatever the URL.
    if ca_file is None:
        return True
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except OSError as e:
        raise UsageError(f"--ca-file {ca_file}: {e.strerror}") from e
    except ssl.SSLError as e:
        raise UsageError(f"--ca-file {ca_file}: no PEM certificate in it ({e.reason})") from e
    return context if url.startswith("https:") else True


def explain(error: errors.ClientError, url: str, *, token: str | None = None,
            ca_file: str | None = None) -> str:
    """One line for a person: what failed and what to check. ``token`` and ``ca_file`` are
    what this request was sent with, so a 401 or an untrusted certificate names the right
    remedy."""
    if isinstance(error, errors.InvalidURL):
        return f"TASKRUNNER_URL: {error}"
    if isinstance(error, errors.CertificateNotTrusted):
        if ca_file is not None:
            return f"{error}: not by --ca-file {ca_file} (is it the instance's certificate?)"
        return (f"{error}: trust it with --ca-file FILE or SSL_CERT_FILE=FILE, FILE the "
                "instance's certificate (PEM) or its CA's")
    if isinstance(error, errors.ConnectFailed):
        return f"{error} (is the instance running there? TASKRUNNER_URL={url})"
    if isinstance(error, errors.TimedOut):
        return f"{error} (a slow or stopped instance? try again)"
    if isinstance(error, errors.Unauthorized):
        if token is None:
            return (f"{url} wants a token ({error.status} {error.code}) and none was given: "
                    "set TASKRUNNER_TOKEN to the instance's token")
        return (f"{url} refused the token ({error.status} {error.code}): set "
                "TASKRUNNER_TOKEN to the instance's token")
    if isinstance(error, errors.TooManyRequests | errors.Unavailable):
        # The service's own message names the cause (the instance's slots, the caller's
        # share, the job store, shutting down); only a refusal with a wait may be retried.
        if error.retry_after is None:
            return str(error)
        return (f"{error}; it asks to retry after {error.retry_after:g} s: try again, or "
                "use --retry")
    if isinstance(error, errors.NotFound) and error.code == "not_found":
        return f"{error.message} at {url} ({error.status} {error.code}): is TASKRUNNER_URL right?"
    if isinstance(error, errors.ProtocolError):
        return f"{url} {error}"
    return str(error)


def _retrying(error: errors.ServiceError, seconds: float) -> None:
    _say(f"{error.message} ({error.status} {error.code}): trying again in {seconds:g} s")


def _show(text: str) -> None:
    # Each line made visible: the table's cells already are (their widths need it), and
    # visible() leaves its own result as it is.
    sys.stdout.write("\n".join(visible(line) for line in text.split("\n")) + "\n")
    sys.stdout.flush()


def _say(text: str) -> None:
    # One line, whatever a message holds, and nothing of the service's text that a
    # terminal would act on.
    sys.stderr.write(f"trun: {visible(text)}\n")
    sys.stderr.flush()


def _environment(pairs: list[str]) -> dict[str, str] | None:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--env {pair!r}: expected NAME=VALUE")
        env[name] = value
    return env or None


def _stdin(source: str | None) -> str | None:
    if source is None:
        return None
    try:
        if source == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(source, "rb") as f:
                data = f.read()
        return data.decode()
    except OSError as e:
        raise UsageError(f"--stdin {source}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise UsageError(f"--stdin {source}: not UTF-8 text ({e.reason} at byte {e.start}); "
                         "the API sends stdin as text") from e


def ended(info: JobInfo, show_usage: bool = False) -> int:
    """The exit status a job's end stands for (`run` and `wait`), saying why when it is not
    the command's own; with ``show_usage``, what its command cost first (nothing for one
    that never started)."""
    if show_usage and info.usage is not None:
        sys.stderr.write(usage_line(info.usage) + "\n")
        sys.stderr.flush()
    if info.state == "failed":
        reason = (info.error or {}).get("message", "it could not start")
        _say(f"job {info.id} failed: {reason}")
        return EXIT_CANNOT_START
    if info.state == "lost":
        _say(f"job {info.id} was lost: its instance died while it ran")
        return EXIT_FAILED
    if info.timed_out:
        limit = info.raw.get("timeout")
        after = f"{limit:g}" if isinstance(limit, int | float) else f"{info.duration or 0:.1f}"
        _say(f"job {info.id} timed out after {after} s: killed")
    code = info.exit_code
    return EXIT_FAILED if code is None else code


async def do_run(client: AsyncClient, args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("run: no command given (trun run -- PROGRAM ARGS...)")
    body = {"timeout": args.timeout, "env": _environment(args.env), "cwd": args.cwd,
            "stdin": args.stdin_text}
    try:
        job = await client.submit(command, **body)
    except (errors.CannotStart, errors.Forbidden) as e:
        _say(str(e))
        return EXIT_CANNOT_START
    return await _attach(job, args.detach, args.usage)


async def _attach(job: AsyncJob, detach: bool, show_usage: bool = False) -> int:
    # The job's id alone (--detach), or its output live and its end as our exit status.
    if detach:
        _show(job.id)
        return 0
    out, err = stdio()
    attached = Attached(job, out, err)
    info = await attached.run()
    if attached.broken_pipe:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    if info is None or attached.interrupts:
        return EXIT_INTERRUPTED
    return ended(info, show_usage)


async def do_actions(client: AsyncClient, args: argparse.Namespace) -> int:
    actions = await client.actions()
    if args.json:
        _show(json.dumps({"actions": actions}, indent=2))
        return 0
    for action in actions:
        params = action.get("params") or {}
        required = set(params.get("required") or [])
        shown = [f"{name}={_kind(schema)}" if name in required
                 else f"[{name}={_kind(schema)}]"
                 for name, schema in (params.get("properties") or {}).items()]
        _show(" ".join([str(action.get("name")), *shown]))
        if action.get("description"):
            _show(f"    {action['description']}")
    return 0


def _kind(schema: dict[str, Any]) -> str:
    # A parameter's type as a person writes it on the command line.
    if "enum" in schema:
        return "|".join(map(str, schema["enum"]))
    kind = schema.get("type")
    if kind == "array":
        return "ITEM..."
    return {"integer": "N", "boolean": "true|false"}.get(str(kind), "TEXT")


async def do_action(client: AsyncClient, args: argparse.Namespace) -> int:
    known = {a.get("name"): a for a in await client.actions()}
    action = known.get(args.name)
    schemas = (action or {}).get("params", {}).get("properties") or {}
    params = _params(args.params, schemas)
    try:
        job = await client.submit_action(args.name, params, timeout=args.timeout,
                                         stdin=args.stdin_text)
    except (errors.CannotStart, errors.Forbidden) as e:
        _say(str(e))
        return EXIT_CANNOT_START
    return await _attach(job, args.detach, args.usage)


def _params(pairs: list[str], schemas: dict[str, Any]) -> dict[str, Any]:
    # KEY=VALUE as the action's schema types them: an integer, a boolean, an array's items
    # one pair each; unknown keys go as text, for the instance to name in its refusal.
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"do: {pair!r}: expected KEY=VALUE")
        kind = schemas.get(name, {}).get("type")
        value: Any = text
        if kind == "integer":
            try:
                value = int(text)
            except ValueError:
                raise UsageError(f"do: {name} must be an integer, not {text!r}") from None
        elif kind == "boolean":
            if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise UsageError(f"do: {name} must be true or false, not {text!r}")
            value = text.lower() in ("true", "yes", "1")
        if kind == "array":
            params.setdefault(name, []).append(text)
        elif name in params:
            raise UsageError(f"do: {name} given twice (only an array takes several)")
        else:
            params[name] = value
    return params


async def do_ps(client: AsyncClient, args: argparse.Namespace) -> int:
    jobs = await client.jobs(state=args.state, instance=args.instance, limit=args.limit)
    if args.json:
        _show(json.dumps({"jobs": [job.info.raw for job in jobs]}, indent=2))
    else:
        _show(job_table([job.info for job in jobs]))
    return 0


async def do_logs(client: AsyncClient, args: argparse.Namespace) -> int:
    out, err = stdio()
    job = await client.job(args.id)
    if not args.follow:
        out.write(job.info.stdout.encode(errors="replace"))  # as attach.py
        out.flush()
        err.write(job.info.stderr.encode(errors="replace"))
        err.flush()
        return 0
    async for chunk in job.follow():
        stream = err if chunk.stream == "stderr" else out
        stream.write(chunk.data.encode(errors="replace"))
        stream.flush()
    return 0


async def do_wait(client: AsyncClient, args: argparse.Namespace) -> int:
    job = await client.job(args.id)
    return ended(await job.wait(), args.usage)


async def do_cancel(client: AsyncClient, args: argparse.Namespace) -> int:
    job = await client.job(args.id)
    was_done = job.info.done
    info = await job.cancel()
    _show(f"{info.id} {'had already ended: ' if was_done else ''}{info.state}"
          + ("" if info.status is None else f" (status {info.status})"))
    return 0


async def do_health(client: AsyncClient, args: argparse.Namespace) -> int:
    body = await client.health()
    if args.json:
        _show(json.dumps(body, indent=2))
    else:
        _show(" ".join(f"{key} {visible(body[key])}" for key in
                       ("status", "instance", "running", "version") if key in body))
    return 0 if body.get("status") == "ok" else EXIT_DEGRADED
