"""The one renderer of the configs of a deployment: nginx's (the whole nginx.conf that
scripts/stack and scripts/cluster run, or the http-context part for a distribution's
conf.d) and a host's supervisord program, from a list of instances or an inventory
(scripts/inventory.py).

The nginx text comes from deploy/nginx.conf.template, which holds
deploy/nginx-http.conf.template at ``@HTTP@``; only the lists (upstream servers, the
per-owner upstreams, the job map) and the settings are made here.

    python3 scripts/render.py stack --port 8080 --base-port 8885 --run-dir RUN [--max-body N]

prints the stack's nginx.conf (its instances are 127.0.0.1:BASE..BASE+3 named by their
port; TLS from ``TASKRUNNER_TLS_CERT`` and ``TASKRUNNER_TLS_KEY``). scripts/cluster's
``print-front`` and ``print-host`` print the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
from collections.abc import Sequence

from inventory import LOOPBACK, Front, Host, Instance, Inventory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHOLE_TEMPLATE = os.path.join(REPO, "deploy", "nginx.conf.template")
HTTP_TEMPLATE = os.path.join(REPO, "deploy", "nginx-http.conf.template")
STACK_INSTANCES = 4


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def upstream_name(instance: Instance) -> str:
    """The upstream of the job routes of ``instance``'s jobs."""
    return f"taskrunner_{instance.name}"


def _owner_upstream(owner: Instance, instances: Sequence[Instance]) -> str:
    # The owner first; every other instance of the cluster a backup, which nginx asks only
    # when the owner cannot be connected to.
    lines = [f"upstream {upstream_name(owner)} {{",
             f"    server {owner.endpoint} max_fails=1 fail_timeout=2s;"]
    lines += [f"    server {other.endpoint} backup max_fails=1 fail_timeout=2s;"
              for other in instances if other != owner]
    lines += ["    keepalive 8;", "    keepalive_timeout 10s;", "}"]
    return "\n".join(lines)


def _tls(front: Front) -> str:
    if not front.tls_cert:
        return ""
    # The server block of docs/deploy.md ("TLS"): a plain HTTP request to the port (nginx's
    # 497) is answered as the redirect server there answers. No HSTS: the port may be a
    # loopback one.
    return "\n".join(f"    {line}" for line in [
        f"ssl_certificate {os.path.abspath(front.tls_cert)};",
        f"ssl_certificate_key {os.path.abspath(front.tls_key)};",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "ssl_prefer_server_ciphers off;",
        "ssl_session_cache shared:taskrunner_tls:10m;",
        "ssl_session_timeout 1h;",
        "ssl_session_tickets off;",
        "error_page 497 = /.taskrunner-error/497;",
    ])


def http_snippet(instances: Sequence[Instance], front: Front) -> str:
    """The http-context part: what a distribution's nginx includes from its conf.d."""
    if not instances:
        raise ValueError("no instances to put behind the front")
    servers = "\n".join(f"    server {i.endpoint} max_fails=1 fail_timeout=2s;"
                        for i in instances)
    return _fill(_read(HTTP_TEMPLATE), {
        "LISTEN": front.listen,
        "SSL": " ssl" if front.tls_cert else "",
        "TLS": _tls(front),
        "ACCESS_LOG": front.access_log,
        "MAX_BODY": str(front.max_body),
        "HOST_NAMES": "\n".join(f'    "{name}" 1;' for name in front.names),
        "SERVERS": servers,
        "INSTANCE_UPSTREAMS": "\n\n".join(_owner_upstream(i, instances) for i in instances),
        "JOB_MAP": "\n".join(f"    {i.name} {upstream_name(i)};" for i in instances),
    })


def nginx_conf(instances: Sequence[Instance], front: Front, run_dir: str) -> str:
    """The whole nginx.conf, every file it writes under ``run_dir`` (its access log is
    ``run_dir/log/nginx-access.log`` whatever ``front.access_log`` says)."""
    run_dir = os.path.abspath(run_dir)
    front = dataclasses.replace(front,
                                access_log=os.path.join(run_dir, "log", "nginx-access.log"))
    http = "\n".join(f"    {line}" if line else ""
                     for line in http_snippet(instances, front).rstrip("\n").split("\n"))
    return _fill(_read(WHOLE_TEMPLATE), {
        # As root, the workers run as nobody (they need no more).
        "USER": "user nobody nogroup;" if os.geteuid() == 0 else "",
        "RUN_DIR": run_dir,
        "HTTP": http,
    })


def stack_instances(base_port: int) -> list[Instance]:
    """The stack's four instances: 127.0.0.1, named by their port (the default --instance)."""
    return [Instance(str(port), "127.0.0.1", port)
            for port in range(base_port, base_port + STACK_INSTANCES)]


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


def _quote(word: str) -> str:
    # supervisord splits the command as a shell would, after expanding %(process_num)d.
    return word if re.fullmatch(r"[\w@%+=:,./()-]+", word) else shlex.quote(word)


def supervisord_program(host: Host, inventory: Inventory, python: str, run_dir: str,
                        log_dir: str) -> str:
    """The ``[program:...]`` section of ``host``'s instances, for a supervisord.conf (or a
    distribution's /etc/supervisor/conf.d). ``run_dir`` holds the host's recycle lock."""
    # One program, numprocs instances: process_num is the port, so supervisord expands
    # the one command line into each instance's. supervisord reads %(...)s in values, so
    # a literal % (say, in the index's URL) is written %%.
    template = Instance(f"{host.name}-PORT", host.address, 0)
    words = instance_command(template, inventory, python, run_dir)
    words = [w.replace("%", "%%") for w in words]
    words[words.index("--port") + 1] = "%(process_num)d"
    words[words.index("--instance") + 1] = f"{host.name}-%(process_num)d"
    return "\n".join([
        f"; The taskrunner instances of host {host.name}: {host.address} ports "
        f"{host.first_port}..{host.first_port + host.instances - 1}.",
        f"[program:taskrunner_{host.name}]",
        f"numprocs={host.instances}",
        f"numprocs_start={host.first_port}",
        "process_name=%(program_name)s-%(process_num)d",
        "command=" + " ".join(_quote(w) for w in words),
        "autostart=true",
        "; Always: an instance that recycled (--max-requests) exits 0 and must come back too.",
        "autorestart=true",
        "startsecs=1",
        "startretries=5",
        "; On TERM an instance drains for --grace (10 s), kills the rest and exits.",
        "stopsignal=TERM",
        "stopwaitsecs=30",
        "redirect_stderr=true",
        f"stdout_logfile={os.path.join(log_dir, '%(program_name)s-%(process_num)d.log')}",
        "stdout_logfile_maxbytes=50MB",
        "stdout_logfile_backups=5",
    ]) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="render.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("stack",))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--base-port", type=int, required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--max-body", type=int, default=1048576)
    args = parser.parse_args(argv)
    cert = os.environ.get("TASKRUNNER_TLS_CERT", "")
    key = os.environ.get("TASKRUNNER_TLS_KEY", "")
    front = Front(f"127.0.0.1:{args.port}", cert, key, args.max_body)
    sys.stdout.write(nginx_conf(stack_instances(args.base_port), front, args.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
