"""nginx, one target of the renderer: the front of the stack and of a cluster, as the
http-context part a distribution's nginx takes in its conf.d, or as a whole nginx.conf whose
files are all under one run directory.

The text is the package's templates/nginx.conf.template around
templates/nginx-http.conf.template (at ``@HTTP@``); only the lists (upstream servers, the
per-owner upstreams, the job map, the names the front answers to) and the settings are made
here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from taskrunner.config import TLS12_CIPHERS
from taskrunner.deploy.inventory import Front, Instance
from taskrunner.deploy.programs import stack_instances
from taskrunner.deploy.rendering import render
from taskrunner.deploy.settings import Settings

__all__ = ["MALLOC_TUNABLES", "http_snippet", "nginx_conf", "stack_conf", "stack_instances",
           "upstream_name"]

MALLOC_TUNABLES = "glibc.malloc.trim_threshold=33554432:glibc.malloc.mmap_threshold=4194304"
"""``GLIBC_TUNABLES`` for nginx: its workers keep their freed proxy buffers (up to 32 MiB of
heap each) instead of page-faulting them back in for every large response
(docs/deploy.md, "nginx")."""


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
        # TLS 1.2: ECDHE with AEAD only, no CBC; TLS 1.3 as OpenSSL has it.
        f"ssl_ciphers {TLS12_CIPHERS};",
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
    return render("nginx-http.conf.template", {
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
    return render("nginx.conf.template", {
        # As root, the workers run as nobody (they need no more).
        "USER": "user nobody nogroup;" if os.geteuid() == 0 else "",
        "RUN_DIR": run_dir,
        "HTTP": http,
    })


def stack_conf(settings: Settings) -> str:
    """The stack's whole nginx.conf: its four instances behind ``127.0.0.1:port``."""
    front = Front(f"127.0.0.1:{settings.port}", settings.tls_cert, settings.tls_key,
                  settings.max_body)
    return nginx_conf(stack_instances(settings.base_port), front, settings.run_dir)
