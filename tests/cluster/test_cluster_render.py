"""The inventory and what is rendered from it, for real: the front's conf.d part in a
minimal nginx that includes it (``nginx -t``, then requests through it to two instances),
a host's supervisord program as supervisord itself reads it, and an inventory's mistakes
as one-line errors.

Needs nginx and supervisor, not root. Ports 18950-18951 (instances) and 18960 (nginx).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from clusterutil import CLUSTER, call
from conftest import ChildInstance
from helpers import pid_alive, wait_until
from stackutil import REPO, needs_stack

pytestmark = needs_stack()

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PORTS = [18950, 18951]
FRONT = 18960
TOKEN = "cluster-render-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

INVENTORY = f"""
state_url = "postgresql://taskrunner@127.0.0.1:55599/taskrunner"
lost_after = 5
token_file = "/etc/taskrunner/token"
instance_args = ["--insecure-http"]

[front]
listen = "127.0.0.1:{FRONT}"
server_names = ["tasks.example", "127.0.0.1"]

[[hosts]]
name = "h1"
address = "127.0.0.1"
first_port = {PORTS[0]}
instances = 1

[[hosts]]
name = "h2"
address = "127.0.0.1"
first_port = {PORTS[1]}
instances = 1
"""


def cluster_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLUSTER, *args], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "PYTHON": sys.executable})


@pytest.fixture(scope="module")
def inventory_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inventory") / "cluster.toml"
    path.write_text(INVENTORY)
    return str(path)


@pytest.fixture(scope="module")
def front(tmp_path_factory, inventory_file):
    """Two instances (h1-18950, h2-18951) and a minimal nginx whose http block includes the
    printed conf.d part and nothing else of ours."""
    directory = str(tmp_path_factory.mktemp("distro-nginx"))
    os.makedirs(f"{directory}/conf.d")
    os.makedirs(f"{directory}/temp")
    if os.geteuid() == 0:
        os.chown(f"{directory}/temp", 65534, -1)  # nginx's workers run as nobody
    with open(inventory_file) as f:
        text = f.read().replace('listen = "', f'access_log = "{directory}/access.log"\n'
                                'listen = "')
    with open(f"{directory}/cluster.toml", "w") as f:
        f.write(text)
    printed = cluster_cli("print-front", "--inventory", f"{directory}/cluster.toml")
    assert printed.returncode == 0, printed.stderr
    with open(f"{directory}/conf.d/taskrunner.conf", "w") as f:
        f.write(printed.stdout)
    conf = f"{directory}/nginx.conf"
    with open(conf, "w") as f:
        # The main context as the printed part's comment asks for it.
        f.write(f"pid {directory}/nginx.pid;\nerror_log {directory}/error.log;\n"
                "worker_rlimit_nofile 10240;\nevents { worker_connections 4096; }\n"
                f"http {{\n    client_body_temp_path {directory}/temp;\n"
                f"    proxy_temp_path {directory}/temp;\n"
                f"    include {directory}/conf.d/*.conf;\n}}\n")
    nginx = [NGINX, "-p", directory, "-e", f"{directory}/error.log", "-c", conf]
    instances = []
    try:
        checked = subprocess.run([*nginx, "-t"], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr
        assert "test is successful" in checked.stderr
        for port, name in zip(PORTS, ("h1", "h2"), strict=True):
            # --allowed-host as print-host renders it (test_print_host_... checks that).
            instances.append(ChildInstance(["--port", str(port), "--instance",
                                            f"{name}-{port}", "--allowed-host",
                                            "tasks.example"], env={"TASKRUNNER_TOKEN": TOKEN}))
        subprocess.run(nginx, check=True, capture_output=True)
        assert wait_until(lambda: os.path.exists(f"{directory}/nginx.pid"), 5)
        yield directory
    finally:
        pid = None
        if os.path.exists(f"{directory}/nginx.pid"):
            with open(f"{directory}/nginx.pid") as f:
                pid = int(f.read())
            subprocess.run([*nginx, "-s", "quit"], capture_output=True, check=False)
            wait_until(lambda: not pid_alive(pid), 10)
        for instance in instances:
            instance.stop()


def test_the_conf_d_part_serves_run_and_routes_jobs_to_their_owner(front):
    status, _, body = call("127.0.0.1", FRONT, "POST", "/run", {"args": ["echo", "hi"]}, AUTH)
    assert (status, body["stdout"]) == (200, "hi\n")
    seen = {call("127.0.0.1", FRONT, "GET", "/healthz", None, AUTH)[2]["instance"]
            for _ in range(6)}
    assert seen == {"h1-18950", "h2-18951"}
    owners = set()
    for _ in range(6):
        status, _, job = call("127.0.0.1", FRONT, "POST", "/jobs", {"args": ["echo", "j"]},
                              AUTH)
        assert status == 202, job
        owners.add(job["id"].split(".")[0])
        status, _, got = call("127.0.0.1", FRONT, "GET", f"/jobs/{job['id']}", None, AUTH)
        assert status == 200 and got["id"] == job["id"]  # its owner answered
    assert owners == {"h1-18950", "h2-18951"}
    status, headers, body = call("127.0.0.1", FRONT, "GET", "/jobs/h9-1.abc", None, AUTH)
    assert (status, body["error"]) == (404, "job_not_found")
    assert headers["Content-Type"] == "application/json"
    time.sleep(1.2)  # nginx writes its access log every second
    with open(f"{front}/access.log") as f:
        assert "upstream=127.0.0.1:18950" in f.read()


def test_the_front_answers_only_to_its_server_names_and_its_instances_agree(front):
    # A name of the front's server_names reaches an instance, which answers to it too
    # (--allowed-host from the inventory); a same-origin page's POST passes.
    for host in ("tasks.example", "localhost", "127.0.0.1"):
        status, _, body = call("127.0.0.1", FRONT, "POST", "/run", {"args": ["echo", host]},
                               {**AUTH, "Host": f"{host}:{FRONT}",
                                "Origin": f"http://{host}:{FRONT}",
                                "Content-Type": "application/json"})
        assert (status, body["stdout"]) == (200, f"{host}\n"), body
    # A DNS name rebound to the front's address: nginx itself refuses it, on every route.
    for method, path in (("POST", "/run"), ("GET", "/healthz"), ("GET", "/jobs/h1-18950.x")):
        status, headers, body = call("127.0.0.1", FRONT, method, path, {"args": ["id"]},
                                     {**AUTH, "Host": "evil.example"})
        assert (status, body["error"]) == (421, "host_not_allowed"), (path, body)
        assert "this front does not answer" in body["message"]  # nginx's own answer
        assert headers["Content-Type"] == "application/json"
    # A page of another origin, through the front: the instance refuses it.
    status, _, body = call("127.0.0.1", FRONT, "POST", "/run", {"args": ["id"]},
                           {**AUTH, "Origin": "http://evil.example"})
    assert (status, body["error"]) == (403, "origin_not_allowed")


def test_a_front_on_a_wildcard_address_must_name_its_server_names(tmp_path):
    path = tmp_path / "wild.toml"
    path.write_text(URL + '[front]\nlisten = "0.0.0.0:8090"\n' + HOST)
    done = cluster_cli("print-front", "--inventory", str(path))
    assert done.returncode == 1
    assert "front.listen is a wildcard address: name the front's front.server_names" \
        in done.stderr
    path.write_text(URL + '[front]\nlisten = "0.0.0.0:8090"\n'
                    'server_names = ["Tasks.Example.", "::1"]\n' + HOST)
    done = cluster_cli("print-front", "--inventory", str(path))
    assert done.returncode == 0, done.stderr
    block = done.stdout.split("map $host $taskrunner_host_ok {", 1)[1].split("}", 1)[0]
    assert block.split() == ['"tasks.example"', "1;", '"[::1]"', "1;", '"localhost"', "1;",
                             '"127.0.0.1"', "1;", '""', "1;", "default", "0;"]


def test_every_route_of_a_job_has_its_owner_first_and_the_others_as_backups(inventory_file):
    text = cluster_cli("print-front", "--inventory", inventory_file).stdout
    block = text.split("upstream taskrunner_h2-18951 {", 1)[1].split("}", 1)[0]
    servers = [line.split()[1:] for line in block.strip().splitlines() if "server" in line]
    assert servers == [["127.0.0.1:18951", "max_fails=1", "fail_timeout=2s;"],
                       ["127.0.0.1:18950", "backup", "max_fails=1", "fail_timeout=2s;"]]
    assert "h2-18951 taskrunner_h2-18951;" in text
    assert "non_idempotent" not in text.replace("Never non_idempotent", "")
    assert "proxy_next_upstream error timeout;" in text
    # Nothing of the whole nginx.conf: a distribution's nginx has its own.
    for directive in ("events", "pid ", "worker_processes", "user ", "temp_path",
                      "worker_rlimit_nofile"):
        assert f"\n{directive}" not in text
    # ... but its comment says what that main context needs for the workers' descriptors.
    comment = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    assert "worker_rlimit_nofile at least 2 x worker_connections plus headroom" in comment


def descriptors(conf):
    """``(worker_connections, worker_rlimit_nofile)`` of a whole nginx.conf (0: not set)."""
    def value(directive):
        found = re.findall(rf"^\s*{directive}\s+(\d+);", conf, re.M)
        assert len(found) <= 1, directive
        return int(found[0]) if found else 0
    return value("worker_connections"), value("worker_rlimit_nofile")


def test_print_front_whole_is_an_nginx_conf_nginx_accepts(tmp_path, inventory_file):
    printed = cluster_cli("print-front", "--inventory", inventory_file, "--whole",
                          "--run-dir", str(tmp_path))
    assert printed.returncode == 0, printed.stderr
    (tmp_path / "nginx.conf").write_text(printed.stdout)
    (tmp_path / "log").mkdir()
    (tmp_path / "nginx").mkdir()  # its temp files: nginx makes the directories inside
    checked = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-e",
                              str(tmp_path / "log" / "error.log"), "-c",
                              str(tmp_path / "nginx.conf")],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    connections, files = descriptors(printed.stdout)
    assert files >= 2 * connections + 1024 and connections == 4096  # two a request, and some
    assert f"pid {tmp_path}/nginx.pid;" in printed.stdout
    assert f"access_log {tmp_path}/log/nginx-access.log taskrunner" in printed.stdout
    done = cluster_cli("print-front", "--inventory", inventory_file, "--whole")
    assert (done.returncode, done.stderr) == (
        2, "cluster: print-front --whole needs --run-dir (nginx's files go there)\n")


def test_print_host_is_a_program_section_supervisord_reads(tmp_path, inventory_file):
    from supervisor.options import ServerOptions
    printed = cluster_cli("print-host", "h2", "--inventory", inventory_file, "--python",
                          "/srv/venv/bin/python", "--run-dir", str(tmp_path), "--log-dir",
                          str(tmp_path))
    assert printed.returncode == 0, printed.stderr
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"[supervisord]\nlogfile={tmp_path}/s.log\npidfile={tmp_path}/s.pid\n"
                    + printed.stdout)
    options = ServerOptions()
    options.realize(args=["-c", str(conf)])
    [group] = options.process_group_configs
    [process] = group.process_configs
    assert process.name == "taskrunner_h2-18951"
    assert process.command.split() == [
        "/srv/venv/bin/python", "-m", "taskrunner", "--address", "127.0.0.1", "--port",
        "18951", "--instance", "h2-18951", "--state-url",
        "postgresql://taskrunner@127.0.0.1:55599/taskrunner", "--lost-after", "5",
        "--recycle-lock", f"{tmp_path}/recycle.lock", "--token-file", "/etc/taskrunner/token",
        "--allowed-host", "tasks.example", "--insecure-http"]
    assert process.stdout_logfile == f"{tmp_path}/taskrunner_h2-18951.log"
    assert process.stopsignal == 15 and process.stopwaitsecs == 30


def test_the_example_inventory_is_valid():
    example = os.path.join(REPO, "taskrunner", "deploy", "cluster.example.toml")
    done = cluster_cli("print-host", "h2", "--inventory", example)
    assert done.returncode == 0, done.stderr
    assert "--instance h2-%(process_num)d" in done.stdout
    assert "numprocs=2\nnumprocs_start=8885\n" in done.stdout


HOST = '[[hosts]]\nname = "h1"\naddress = "10.0.0.1"\nfirst_port = 8885\ninstances = 2\n'
URL = 'state_url = "postgresql://u@db/x"\n'


@pytest.mark.parametrize("text,message", [
    ("state_url = \n", "not valid TOML"),
    (HOST, "state_url is missing or not a postgresql:// URL"),
    (URL, "no [[hosts]]"),
    (URL + HOST.replace('"h1"', '"h-1"'), "name 'h-1': a host name is letters, digits"),
    (URL + HOST + HOST.replace('"h1"', '"H1"').replace("10.0.0.1", "10.0.0.2"),
     "host name 'H1' is used twice"),
    (URL + HOST + HOST.replace('"h1"', '"h2"').replace("8885", "8886"),
     "host 'h2': 10.0.0.1:8886 is also an instance of host 'h1'"),
    (URL + HOST.replace("8885", "65535"), "ports 65535..65536 go past 65535"),
    (URL + HOST.replace("instances = 2", "instances = 0"), "instances must be a whole number"),
    (URL + HOST.replace("address", "adress"), "unknown key hosts[0].adress"),
    (URL + HOST.replace('"10.0.0.1"', '"10.0.0.1; evil"'), "is not an IP address or host"),
    (URL + '[front]\nlisten = "8090"\n' + HOST, "front.listen '8090' is not ADDRESS:PORT"),
    (URL + '[front]\ntls_cert = "c.pem"\n' + HOST, "tls_cert and front.tls_key go together"),
    (URL + "lost_after = -1\n" + HOST, "lost_after must be a number of seconds above 0"),
    (URL.replace("u@", "u:s3cret@") + HOST, "state_url carries a password"),
    ('state_url_file = "url"\n' + HOST, "state_url_file is an absolute path"),
    (URL + 'state_url_file = "/etc/url"\n' + HOST, "replaces state_url: give one"),
], ids=["toml", "url", "hosts", "dash", "case", "overlap", "range", "count", "typo",
        "address", "listen", "tls", "lost", "password", "relative", "both"])
def test_a_wrong_inventory_is_a_one_line_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    done = cluster_cli("print-front", "--inventory", str(path))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"cluster: {path}: "), done.stderr
    assert message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_an_index_url_in_a_file_reaches_the_instances_as_that_file(tmp_path):
    path = tmp_path / "inventory.toml"
    path.write_text('state_url_file = "/etc/taskrunner/state-url"\n' + HOST)
    done = cluster_cli("print-host", "h1", "--inventory", str(path))
    assert done.returncode == 0, done.stderr
    assert " --state-url-file /etc/taskrunner/state-url " in done.stdout
    assert "--state-url " not in done.stdout


def test_print_host_of_an_unknown_host_is_a_usage_error(inventory_file):
    done = cluster_cli("print-host", "h9", "--inventory", inventory_file)
    assert done.returncode == 2
    assert done.stderr == "cluster: no host 'h9' in the inventory (hosts: h1, h2)\n"


def test_the_cluster_commands_want_root_and_say_so(reachable_runtime):
    # As root, the commands are run as nobody, from the copy of the door and what it runs
    # that nobody may read: the checkout may be where only root goes (root's home).
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] \
        if os.geteuid() == 0 else []
    door = os.path.join(reachable_runtime.path, "scripts", "cluster")
    done = subprocess.run([*prefix, door, "status"], capture_output=True, text=True,
                          timeout=60, check=False, cwd="/",
                          env={**os.environ, "PYTHON": reachable_runtime.python})
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("cluster: must run as root: it makes network namespaces and veth "
                           "pairs\n")


def test_stack_renders_through_the_same_renderer(tmp_path):
    done = subprocess.run([sys.executable, "-m", "taskrunner.deploy", "print-stack", "nginx",
                           "--port", "18080", "--base-port", "18885", "--run-dir",
                           str(tmp_path)], capture_output=True, text=True, check=True)
    text = done.stdout
    connections, files = descriptors(text)
    assert files >= 2 * connections + 1024 and connections == 4096
    assert "upstream taskrunner_18885 {" in text
    assert "server 127.0.0.1:18886 backup max_fails=1 fail_timeout=2s;" in text
    assert "18888 taskrunner_18888;" in text
    assert json.dumps("listen 127.0.0.1:18080 backlog=4096;")[1:-1] in text
