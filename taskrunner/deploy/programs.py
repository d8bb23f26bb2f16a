"""What every target renders: a deployment's programs — each a row of instances run alike,
one command line whose only variable is the port — and the flags each instance gets.

The command lines are built here once; a target (`taskrunner.deploy.nginx`,
`taskrunner.deploy.supervisord`, and the next: systemd units, an image, manifests) only
writes a `Program` in its own syntax, standing in its own words for `PORT` and `HERE`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from taskrunner.deploy.inventory import LOOPBACK, Host, Instance, Inventory
from taskrunner.deploy.settings import STACK_INSTANCES

PORT = "{port}"
"""Stands for an instance's port in `Program.argv` and `Program.instance`."""
HERE = "{here}"
"""Stands for the directory of the rendered file, where a target has one (supervisord's
``%(here)s``): the repository's supervisord.conf runs from any checkout."""


@dataclass(frozen=True)
class Program:
    """``count`` instances on ``address``, ports ``first_port`` and up, each run as ``argv``
    with its port for `PORT`."""

    name: str
    """supervisord's program name: ``taskrunner`` (the stack), ``taskrunner_h1`` (a host)."""
    instance: str
    """Each instance's ``--instance`` name, `PORT` in it: ``{port}``, ``h1-{port}``."""
    address: str
    first_port: int
    count: int
    argv: tuple[str, ...]
    about: str
    """What the instances are, in a few words."""
    directory: str = ""
    """Their working directory ('': the target's default)."""
    why: str = ""
    """Why the command line is as it is, if it needs saying."""

    @property
    def ports(self) -> range:
        return range(self.first_port, self.first_port + self.count)


def stack_instances(base_port: int) -> list[Instance]:
    """The stack's four instances: 127.0.0.1, each named by its port (``--instance``, which
    the front's job map routes on)."""
    return [Instance(str(port), "127.0.0.1", port)
            for port in range(base_port, base_port + STACK_INSTANCES)]


def stack_program(base_port: int, run_dir: str, directory: str = "") -> Program:
    """The stack's instances. A shell expands the environment of their supervisor (``PYTHON``,
    ``TASKRUNNER_RUN_DIR``, ``TASKRUNNER_STATE_DIR``, ``TASKRUNNER_ARGS``, which may be
    empty), then ``exec``s, so that the supervisor's signals reach the instance itself."""
    run = f"${{TASKRUNNER_RUN_DIR:-{run_dir}}}"
    script = (f'exec "${{PYTHON:-python3}}" -m taskrunner --port {PORT} --instance {PORT} '
              f'--recycle-lock "{run}/recycle.lock" '
              f'--state-dir "${{TASKRUNNER_STATE_DIR:-{run}/state}}" $TASKRUNNER_ARGS')
    last = base_port + STACK_INSTANCES - 1
    return Program("taskrunner", PORT, "127.0.0.1", base_port, STACK_INSTANCES,
                   ("/bin/sh", "-c", script),
                   f"{STACK_INSTANCES} taskrunner instances on 127.0.0.1:{base_port}-{last}",
                   directory,
                   "exec: the shell only expands the variables (TASKRUNNER_ARGS is empty "
                   "unless set), then becomes the instance, so that the supervisor's "
                   "signals reach the instance itself.")


def instance_command(instance: Instance, inventory: Inventory, python: str,
                     run_dir: str) -> list[str]:
    """The command line of one instance of a cluster host."""
    command = [python, "-m", "taskrunner", "--address", instance.address,
               "--port", str(instance.port), "--instance", instance.name,
               *inventory.index_flags,
               "--lost-after", f"{inventory.lost_after:g}",
               "--recycle-lock", os.path.join(run_dir, "recycle.lock")]
    if inventory.token_file:
        command += ["--token-file", inventory.token_file]
    # nginx passes the Host it answered to; the instances check it again (a rebound name
    # that reached the front still runs nothing). The loopback names they take anyway.
    for name in inventory.front.names:
        if name.strip("[]") not in LOOPBACK:
            command += ["--allowed-host", name]
    return command + list(inventory.instance_args)


def host_program(host: Host, inventory: Inventory, python: str, run_dir: str) -> Program:
    """The instances of cluster host ``host``; ``run_dir`` holds the host's recycle lock."""
    instance = f"{host.name}-{PORT}"
    words = instance_command(Instance(instance, host.address, 0), inventory, python, run_dir)
    words[words.index("--port") + 1] = PORT
    last = host.first_port + host.instances - 1
    return Program(f"taskrunner_{host.name}", instance, host.address, host.first_port,
                   host.instances, tuple(words),
                   f"the taskrunner instances of host {host.name}: {host.address} ports "
                   f"{host.first_port}..{last}")
