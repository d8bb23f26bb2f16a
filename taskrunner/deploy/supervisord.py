"""supervisord, one target of the renderer: a `Program` as one ``[program:...]`` section
(``numprocs`` instances, ``process_num`` their port), and the whole supervisord.conf of the
stack, whose render with paths relative to the file is the repository's supervisord.conf.

Restart and stop settings are the same for every program: always restart (an instance that
recycled exits 0 and must come back too), and ``stopwaitsecs`` above the instances' grace.
"""

from __future__ import annotations

import os
import re
import shlex
import textwrap

from taskrunner.deploy.inventory import Host, Inventory
from taskrunner.deploy.programs import (
    HERE,
    PORT,
    Program,
    host_program,
    instance_command,
    stack_instances,
    stack_program,
)
from taskrunner.deploy.settings import STOP_WAIT, Settings

__all__ = ["instance_command", "program_section", "repository_conf", "stack_conf",
           "stack_instances", "supervisord_conf", "supervisord_program"]


def _value(text: str) -> str:
    # supervisord expands %(name)s in values: a literal % is written %%.
    return (text.replace("%", "%%").replace(PORT, "%(process_num)d")
            .replace(HERE, "%(here)s"))


def _quote(word: str) -> str:
    # supervisord splits the command as a shell would, after expanding %(process_num)d.
    return word if re.fullmatch(r"[\w@%+=:,./()-]+", word) else shlex.quote(word)


def program_section(program: Program, log_dir: str, stop_wait: int = STOP_WAIT) -> str:
    """``program`` as a ``[program:...]`` section: one section, ``numprocs`` instances, so
    supervisord expands the one command line into each instance's. Each logs to
    ``log_dir/taskrunner_INSTANCE.log``."""
    process = "taskrunner_" + _value(program.instance)
    lines = [
        f"; {program.about[0].upper()}{program.about[1:]}.",
        f"[program:{program.name}]",
        f"; process_num is the port: {program.first_port}..{program.ports[-1]}.",
        f"numprocs={program.count}",
        f"numprocs_start={program.first_port}",
        f"process_name={process}",
        *textwrap.wrap(program.why, 88, initial_indent="; ", subsequent_indent="; "),
        "command=" + " ".join(_quote(_value(word)) for word in program.argv),
    ]
    if program.directory:
        lines.append(f"directory={_value(program.directory)}")
    return "\n".join([
        *lines,
        "autostart=true",
        "; Always: an instance that recycled (--max-requests) exits 0 and must come back too.",
        "autorestart=true",
        "startsecs=1",
        "startretries=5",
        "; On TERM an instance stops listening, gives running commands --grace to finish,",
        "; kills the rest and exits: stopwaitsecs stays above --grace (+ a few seconds).",
        "; Commands run in sessions of their own, out of reach of stopasgroup: the instance",
        "; kills them itself.",
        "stopsignal=TERM",
        f"stopwaitsecs={stop_wait}",
        "redirect_stderr=true",
        f"stdout_logfile={_value(os.path.join(log_dir, ''))}{process}.log",
        "stdout_logfile_maxbytes=50MB",
        "stdout_logfile_backups=5",
    ]) + "\n"


def supervisord_program(host: Host, inventory: Inventory, python: str, run_dir: str,
                        log_dir: str, stop_wait: int = STOP_WAIT) -> str:
    """The ``[program:...]`` section of ``host``'s instances, for a supervisord.conf (or a
    distribution's /etc/supervisor/conf.d). ``run_dir`` holds the host's recycle lock."""
    return program_section(host_program(host, inventory, python, run_dir), log_dir,
                           stop_wait)


def supervisord_conf(program: Program, run_dir: str, header: str,
                     stop_wait: int = STOP_WAIT) -> str:
    """A whole supervisord.conf running ``program``: its socket, pid file and logs under
    ``run_dir`` (which may start with `HERE`), ``header`` as its opening comment."""
    run = _value(run_dir)
    comment = "\n".join(f"; {line}".rstrip() for line in header.splitlines())
    return "\n".join([
        comment,
        "",
        "[unix_http_server]",
        f"file={run}/supervisor.sock",
        "chmod=0700",
        "",
        "[supervisord]",
        # The run directory's files (logs: every command line; the socket) are the
        # service's alone.
        "umask=077",
        f"pidfile={run}/supervisord.pid",
        f"logfile={run}/log/supervisord.log",
        f"childlogdir={run}/log",
        f"directory={_value(program.directory or HERE)}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{run}/supervisor.sock",
        "",
        program_section(program, os.path.join(run_dir, "log"), stop_wait),
    ])


_REPOSITORY_HEADER = """\
{about}, run from this checkout.
Rendered by `python -m taskrunner.deploy print-supervisord` (taskrunner/deploy/): change
that, not this file; a test fails when the two differ.

  scripts/stack up        supervisord + nginx on 127.0.0.1:8080 (the usual way)
  supervisord -c supervisord.conf     just the four instances; runtime files in ./run

Extra instance flags come from the environment of supervisord, e.g.
  TASKRUNNER_ARGS="--max-requests 10000" TASKRUNNER_STATE_DIR=/srv/taskrunner scripts/stack up
$PYTHON picks the interpreter (default: python3 on PATH). The four share one job index
(one jobs.sqlite3 in --state-dir): TASKRUNNER_STATE_DIR, by default the run directory's
state/, so any of them answers for any job."""


def repository_conf(settings: Settings) -> str:
    """The repository's supervisord.conf: the stack's instances, every path relative to the
    file, so that ``supervisord -c supervisord.conf`` runs from any checkout."""
    program = stack_program(settings.base_port, f"{HERE}/run", settings.directory or HERE)
    return supervisord_conf(program, f"{HERE}/run",
                            _REPOSITORY_HEADER.format(about=program.about),
                            settings.stop_wait)


def stack_conf(settings: Settings) -> str:
    """The stack's supervisord.conf, every file under ``settings.run_dir``."""
    run_dir = os.path.abspath(settings.run_dir)
    program = stack_program(settings.base_port, run_dir, settings.directory)
    header = (f"The stack in {run_dir}: {program.about}.\n"
              "Rendered by scripts/stack (taskrunner-deploy print-stack supervisord).")
    return supervisord_conf(program, run_dir, header, settings.stop_wait)
