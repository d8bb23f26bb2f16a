"""The deploy tools' settings: one frozen dataclass, each field with its default, its help and
the commands that take it, as `taskrunner.config.Config` is for an instance.

`taskrunner.deploy.cli` makes its flags from these fields only, and the table of
``taskrunner-deploy``'s flags in docs/deploy.md is `table`'s text (a test compares them), so
the command line, ``--help`` and the manual cannot drift apart. What an instance is told as
well (the body limit, the first port) is taken from `Config`'s defaults, so that a rendered
config and an instance started without flags agree.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from taskrunner.config import Config

COMMANDS = {
    "print-front": "the front's nginx: the http-context part for a distribution's conf.d, "
                   "or with --whole a whole nginx.conf",
    "print-host": "a host's supervisord program: its instances, as one [program:...] section",
    "print-stack": "the stack's nginx.conf or supervisord.conf (four instances on one machine)",
    "print-supervisord": "the repository's supervisord.conf (the stack's instances, paths "
                         "relative to the file)",
    "print-systemd": "a host's systemd units: taskrunner@.service or taskrunner@.socket, "
                     "one instance per port (taskrunner@PORT)",
    "print-kube": "Kubernetes manifests: a ConfigMap of the instance's flags, a Secret "
                  "(the token, the index's URL), a Deployment, a Service, a "
                  "PodDisruptionBudget",
}
"""The subcommands of ``taskrunner-deploy``, each with its help."""

STACK_INSTANCES = 4
"""The stack runs four instances, on consecutive ports from ``--base-port``."""

_INSTANCE = Config()


def setting(default: Any, help: str, *commands: str, flag: str = "") -> Any:
    """A dataclass field that is a setting: its default, its help, the commands that take it
    and its flag (default: ``--`` and the field's name with ``-`` for ``_``)."""
    return field(default=default, metadata={"help": help, "commands": commands, "flag": flag})


@dataclass(frozen=True)
class Settings:
    """Every setting of ``taskrunner-deploy``; a command reads the ones it takes."""

    whole: bool = setting(
        False, "a whole nginx.conf, its files under --run-dir, instead of the http-context "
        "part", "print-front")
    python: str = setting(
        "/usr/bin/python3", "the host's interpreter that has taskrunner installed",
        "print-host", "print-systemd")
    run_dir: str = setting(
        "/run/taskrunner", "runtime files: the instances' recycle lock; nginx's pid file, "
        "logs and temp files in a whole nginx.conf; the stack's supervisord files",
        "print-front", "print-host", "print-stack")
    log_dir: str = setting(
        "/var/log/taskrunner", "the instances' logs, one taskrunner_NAME.log each",
        "print-host")
    stop_wait: int = setting(
        30, "seconds the supervisor gives an instance to stop after TERM (supervisord's "
        "stopwaitsecs, systemd's TimeoutStopSec, Kubernetes' terminationGracePeriodSeconds "
        f"after --pre-stop): above its --grace ({_INSTANCE.grace:g}) plus the kill, the last "
        "answers and the callbacks' 3 s", "print-host", "print-stack", "print-supervisord",
        "print-systemd", "print-kube")
    port: int = setting(8080, "the stack's nginx port on 127.0.0.1", "print-stack")
    base_port: int = setting(
        _INSTANCE.port, f"the stack's first instance port; its {STACK_INSTANCES} are "
        "consecutive", "print-stack", "print-supervisord")
    max_body: int = setting(
        _INSTANCE.max_body, "nginx's body limit in bytes; keep it equal to the instances' "
        "--max-body", "print-stack")
    tls_cert: str = setting(
        "", "PEM certificate, its chain after it: the stack's nginx serves HTTPS "
        "(with --tls-key)", "print-stack")
    tls_key: str = setting("", "PEM private key of --tls-cert", "print-stack")
    address: str = setting(
        _INSTANCE.address, "the units' address: the socket's ListenStream, and the "
        "instance's --address when it binds the port itself", "print-systemd")
    watchdog_sec: int = setting(
        30, "the service's WatchdogSec: systemd restarts an instance whose event loop "
        "stops answering for this long; 0: no watchdog", "print-systemd")
    unit_user: str = setting(
        "taskrunner", "the service's User= and Group=; empty: root, which --user needs",
        "print-systemd")
    directory: str = setting(
        "", "the instances' working directory; empty: the directory of the supervisord.conf",
        "print-stack", "print-supervisord")
    name: str = setting(
        "taskrunner", "the name of every object, and the pods' app.kubernetes.io/instance label",
        "print-kube")
    namespace: str = setting(
        "default", "the objects' namespace; the instances answer to the Service's names in it",
        "print-kube")
    image: str = setting(
        "localhost/taskrunner:latest", "the image the pods run (scripts/image builds it)",
        "print-kube")
    replicas: int = setting(
        1, "pods, one instance each; above 1 they must share a PostgreSQL index "
        "(--state-url-file)", "print-kube")
    token_file: str = setting(
        "", "file holding the instances' bearer token, put into the Secret (so the output "
        "holds it: pipe it to kubectl apply, or keep it 0600)", "print-kube")
    state_url_file: str = setting(
        "", "file holding the PostgreSQL index's postgresql:// URL, password included, put "
        "into the Secret; empty: each pod keeps its jobs in SQLite on an emptyDir",
        "print-kube")
    secret_dir: str = setting(
        "", "take the Secret's files (token; state-url with --state-url-file, which is then "
        "not read) from this directory of the node (a hostPath volume) instead of a "
        "Secret, which podman 4.3's kube play mounts still base64-encoded; not for a "
        "cluster", "print-kube")
    host_port: int = setting(
        0, "publish each pod's port on 127.0.0.1:N of its node (hostPort, for podman kube "
        "play; one pod only); 0: none", "print-kube")
    uid: int = setting(
        10001, "the user and group id the pods run as (the image's own user)", "print-kube")
    cpu: str = setting("500m", "CPU each pod requests", "print-kube")
    cpu_limit: str = setting(
        "2", "CPU limit of each pod: the instance and every command it runs", "print-kube")
    memory: str = setting(
        "512Mi", "memory each pod requests and may use, the instance and its commands "
        "together", "print-kube")
    pre_stop: int = setting(
        5, "seconds a deleted pod goes on serving before SIGTERM (a preStop sleep), while "
        "the Service and the ingress forget it", "print-kube")
    instance_args: str = setting(
        "", "more flags for every instance, split as a shell would (e.g. '--allowed-host "
        "tr.example.com --max-running 64')", "print-kube")

    def __post_init__(self) -> None:
        for name in ("port", "base_port"):
            if not 1 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be 1..65535, not {getattr(self, name)}")
        if self.base_port + STACK_INSTANCES - 1 > 65535:
            raise ValueError(f"base_port: the {STACK_INSTANCES} instance ports go past 65535")
        for name in ("max_body", "stop_wait"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.watchdog_sec < 0:
            raise ValueError("watchdog_sec must be >= 0")
        if self.unit_user and not re.fullmatch(r"[a-z_][a-z0-9_-]*", self.unit_user):
            raise ValueError(f"unit_user: {self.unit_user!r} is not a user name")
        if not re.fullmatch(r"[0-9A-Za-z.:-]+", self.address):
            raise ValueError(f"address: {self.address!r} is not an address")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        self._check_kube()

    def _check_kube(self) -> None:
        for name in ("name", "namespace"):
            if not re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", getattr(self, name)):
                raise ValueError(f"{name} must be a DNS label: a-z, 0-9 and '-', at most 40")
        if self.replicas < 1:
            raise ValueError("replicas must be >= 1")
        # Pods of one instance each keep their jobs apart unless they share PostgreSQL:
        # a job would be found only by the pod that ran it, and lost with it.
        if self.replicas > 1 and not self.state_url_file:
            raise ValueError("replicas above 1 need the PostgreSQL index: give "
                             "--state-url-file")
        if not 0 <= self.host_port <= 65535:
            raise ValueError(f"host_port must be 0..65535, not {self.host_port}")
        if self.host_port and self.replicas > 1:
            raise ValueError("host_port: the pods of one node would collide on it; one "
                             "replica only")
        if self.uid < 1:
            raise ValueError("uid must be >= 1: the pods run as non-root")
        if self.pre_stop < 0:
            raise ValueError("pre_stop must be >= 0")
        for name in ("cpu", "cpu_limit", "memory"):
            if not re.fullmatch(r"[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?",
                                getattr(self, name)):
                raise ValueError(f"{name}: {getattr(self, name)!r} is not a Kubernetes "
                                 "quantity (e.g. 500m, 2, 512Mi)")
        try:
            words = shlex.split(self.instance_args)
        except ValueError as exc:
            raise ValueError(f"instance_args: {exc}") from None
        # The ConfigMap holds one word a line.
        if any("\n" in word for word in words):
            raise ValueError("instance_args: a word may not hold a line break")
        if self.secret_dir and not os.path.isabs(self.secret_dir):
            raise ValueError("secret_dir must be an absolute path (a hostPath)")


STOP_WAIT: int = Settings().stop_wait
"""supervisord's ``stopwaitsecs`` when no one says otherwise."""


def settings(command: str | None = None) -> list[dataclasses.Field[Any]]:
    """The fields of `Settings` in declaration order; with ``command``, the ones it takes."""
    return [f for f in dataclasses.fields(Settings)
            if command is None or command in f.metadata["commands"]]


def flag(setting: dataclasses.Field[Any]) -> str:
    """The ``--flag`` of ``setting``."""
    return setting.metadata.get("flag") or "--" + setting.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser,
                  fields: list[dataclasses.Field[Any]]) -> None:
    """One ``--flag`` per field, with its default and help; its value goes to the field's name."""
    for setting in fields:
        if isinstance(setting.default, bool):  # a switch: --flag turns it on
            parser.add_argument(flag(setting), action="store_true", dest=setting.name,
                                help=setting.metadata["help"])
            continue
        kind: Any = type(setting.default)
        parser.add_argument(flag(setting), type=kind, default=setting.default,
                            dest=setting.name, help=setting.metadata["help"],
                            metavar=flag(setting)[2:].replace("-", "_").upper())


def row(setting: dataclasses.Field[Any], commands: bool = True) -> str:
    """``setting``'s row in a docs table: its flag, its default, [the commands that take it,]
    its help."""
    default = setting.default
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    shown = "(none)" if default == "" else "off" if default is False else f"`{default}`"
    cells = [f"`{flag(setting)}`", shown]
    if commands:
        cells.append(", ".join(f"`{c}`" for c in setting.metadata["commands"]))
    return "| " + " | ".join([*cells, setting.metadata["help"]]) + " |"


def table() -> str:
    """docs/deploy.md's table of ``taskrunner-deploy``'s flags: flag, default, commands, help."""
    rows = ["| flag | default | commands | meaning |", "|---|---|---|---|"]
    rows += [row(setting) for setting in settings()]
    return "\n".join(rows) + "\n"
