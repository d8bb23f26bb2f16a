"""``taskrunner-deploy`` (``python -m taskrunner.deploy``): print a rendered config on stdout.

    taskrunner-deploy print-front INVENTORY [--whole] [--run-dir DIR]
    taskrunner-deploy print-host INVENTORY NAME [--python P] [--run-dir D] [--log-dir D]
    taskrunner-deploy print-stack nginx|supervisord [--port N] [--base-port N] [--run-dir D]
    taskrunner-deploy print-supervisord
    taskrunner-deploy print-systemd service|socket [--python P] [--address A] [--watchdog-sec N]
    taskrunner-deploy print-kube --token-file F [--state-url-file F --replicas N] [--image I]

Every flag is a field of `taskrunner.deploy.settings.Settings` (its default and help). A
mistake, in the flags or in the inventory (naming the file and the key), is one line on
stderr and exit 2; nothing is printed on stdout then.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from taskrunner.deploy import kube, nginx, supervisord, systemd
from taskrunner.deploy.inventory import InventoryError, load
from taskrunner.deploy.settings import COMMANDS, Settings, add_arguments, settings

PROG = "taskrunner-deploy"
STACK_FILES = ("nginx", "supervisord")


def build_parser() -> argparse.ArgumentParser:
    """The parser: one sub-parser per command, each with the `Settings` fields it takes."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {name: sub.add_parser(name, help=text, description=text,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
                for name, text in COMMANDS.items()}
    commands["print-front"].add_argument("inventory", metavar="INVENTORY",
                                         help="the cluster's inventory (TOML)")
    commands["print-host"].add_argument("inventory", metavar="INVENTORY",
                                        help="the cluster's inventory (TOML)")
    commands["print-host"].add_argument("name", metavar="NAME", help="a host of the inventory")
    commands["print-stack"].add_argument("file", choices=STACK_FILES,
                                         help="which of the stack's configs")
    commands["print-systemd"].add_argument("file", choices=systemd.UNITS,
                                           help="which unit: taskrunner@.service or "
                                           "taskrunner@.socket")
    for name, command in commands.items():
        add_arguments(command, settings(name))
    return parser


def render(command: str, args: argparse.Namespace, chosen: Settings) -> str:
    """The text ``command`` prints; `InventoryError` for an inventory it cannot use,
    `kube.KubeError` for a file the manifests cannot take."""
    if command == "print-front":
        inventory = load(args.inventory)
        if chosen.whole:
            return nginx.nginx_conf(inventory.instances, inventory.front, chosen.run_dir)
        return nginx.http_snippet(inventory.instances, inventory.front)
    if command == "print-host":
        inventory = load(args.inventory)
        return supervisord.supervisord_program(inventory.host(args.name), inventory,
                                               chosen.python, chosen.run_dir,
                                               chosen.log_dir, chosen.stop_wait)
    if command == "print-stack":
        if args.file == "nginx":
            return nginx.stack_conf(chosen)
        return supervisord.stack_conf(chosen)
    if command == "print-systemd":
        if args.file == "service":
            return systemd.service_unit(chosen)
        return systemd.socket_unit(chosen)
    if command == "print-kube":
        return kube.render(chosen)
    return supervisord.repository_conf(chosen)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``taskrunner-deploy`` with ``argv`` (default: ``sys.argv[1:]``); its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        chosen = Settings(**{s.name: getattr(args, s.name) for s in settings(args.command)})
    except ValueError as exc:
        parser.error(str(exc))
    try:
        text = render(args.command, args, chosen)
    except (InventoryError, kube.KubeError) as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 2
    sys.stdout.write(text)
    return 0
