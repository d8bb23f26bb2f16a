"""``taskrunner-deploy`` (``python -m taskrunner.deploy``) as an operator runs it: each print
command's output as its reader (nginx, supervisord) takes it, its flags from the one
`Settings`, and a mistake as one line on stderr with exit 2.

nginx's and supervisord's own checks of this output, and requests served through it, are in
tests/cluster/test_cluster_render.py and tests/stack/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO

from taskrunner.config import Config
from taskrunner.deploy.settings import COMMANDS, Settings

EXAMPLE = os.path.join(REPO, "taskrunner", "deploy", "cluster.example.toml")


def deploy(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "taskrunner.deploy", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def supervisord_processes(path: str) -> list:
    from supervisor.options import ServerOptions
    options = ServerOptions()
    options.realize(args=["-c", path])
    return [p for group in options.process_group_configs for p in group.process_configs]


def test_print_front_prints_the_conf_d_part_and_with_whole_an_nginx_conf(tmp_path):
    part = deploy("print-front", EXAMPLE)
    assert part.returncode == 0, part.stderr
    assert "upstream taskrunner_h2-8886 {" in part.stdout
    assert "server 10.77.2.2:8886 max_fails=1 fail_timeout=2s;" in part.stdout
    assert f"client_max_body_size {Config().max_body};" in part.stdout
    assert "\nevents" not in part.stdout and "\npid " not in part.stdout
    whole = deploy("print-front", EXAMPLE, "--whole", "--run-dir", str(tmp_path))
    assert whole.returncode == 0, whole.stderr
    assert f"pid {tmp_path}/nginx.pid;" in whole.stdout
    assert "events {" in whole.stdout
    assert "upstream taskrunner_h2-8886 {" in whole.stdout


def test_print_host_prints_a_program_supervisord_reads(tmp_path):
    done = deploy("print-host", EXAMPLE, "h1", "--python", "/srv/venv/bin/python",
                  "--run-dir", "/run/tr", "--log-dir", str(tmp_path), "--stop-wait", "45")
    assert done.returncode == 0, done.stderr
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"[supervisord]\nlogfile={tmp_path}/s.log\n" + done.stdout)
    processes = supervisord_processes(str(conf))
    assert [p.name for p in processes] == ["taskrunner_h1-8885", "taskrunner_h1-8886"]
    first = processes[0]
    assert first.command.split()[:9] == ["/srv/venv/bin/python", "-m", "taskrunner",
                                         "--address", "10.77.1.2", "--port", "8885",
                                         "--instance", "h1-8885"]
    assert "--recycle-lock /run/tr/recycle.lock" in first.command
    assert first.stdout_logfile == f"{tmp_path}/taskrunner_h1-8885.log"
    assert first.stopwaitsecs == 45


def test_print_stack_prints_its_nginx_conf_and_its_supervisord_conf(tmp_path):
    nginx = deploy("print-stack", "nginx", "--port", "18080", "--base-port", "18885",
                   "--run-dir", str(tmp_path), "--max-body", "4096")
    assert nginx.returncode == 0, nginx.stderr
    assert "listen 127.0.0.1:18080 backlog=4096;" in nginx.stdout
    assert "client_max_body_size 4096;" in nginx.stdout
    assert "server 127.0.0.1:18888 max_fails=1 fail_timeout=2s;" in nginx.stdout
    supervisord = deploy("print-stack", "supervisord", "--base-port", "18885", "--run-dir",
                         str(tmp_path), "--directory", REPO)
    assert supervisord.returncode == 0, supervisord.stderr
    conf = tmp_path / "supervisord.conf"
    conf.write_text(supervisord.stdout)
    (tmp_path / "log").mkdir()  # as scripts/stack makes it
    processes = supervisord_processes(str(conf))
    assert [p.name for p in processes] == [f"taskrunner_{p}" for p in range(18885, 18889)]
    assert all(p.directory == REPO for p in processes)
    assert processes[3].stdout_logfile == f"{tmp_path}/log/taskrunner_18888.log"
    assert f"serverurl=unix://{tmp_path}/supervisor.sock" in supervisord.stdout
    assert processes[0].stopwaitsecs == Settings().stop_wait


def test_print_stack_with_tls_serves_https(tmp_path):
    done = deploy("print-stack", "nginx", "--run-dir", str(tmp_path), "--tls-cert", "c.pem",
                  "--tls-key", "k.pem", cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "listen 127.0.0.1:8080 ssl backlog=4096;" in done.stdout
    assert f"ssl_certificate {tmp_path}/c.pem;" in done.stdout


def test_print_supervisord_prints_the_repositorys_supervisord_conf():
    done = deploy("print-supervisord")
    assert done.returncode == 0, done.stderr
    assert "numprocs_start=8885\n" in done.stdout
    assert "pidfile=%(here)s/run/supervisord.pid\n" in done.stdout


def test_the_console_script_is_the_same_command():
    script = shutil.which("taskrunner-deploy", path=os.path.dirname(sys.executable))
    assert script, "taskrunner-deploy is not installed: scripts/install"
    done = subprocess.run([script, "print-supervisord"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, deploy("print-supervisord").stdout)


def test_help_names_every_command():
    done = deploy("--help")
    assert done.returncode == 0
    for command in COMMANDS:
        assert command in done.stdout


@pytest.mark.parametrize("text,key", [
    ('state_url = "postgresql://u@db/x"\n[[hosts]]\nname = "h1"\nadress = "10.0.0.1"\n',
     "unknown key hosts[0].adress"),
    ('state_url = "postgresql://u@db/x"\n[front]\nmax_body = 0\n[[hosts]]\nname = "h1"\n'
     'address = "10.0.0.1"\nfirst_port = 8885\ninstances = 1\n', "max_body must be"),
    ("state_url = \n", "not valid TOML"),
], ids=["typo", "value", "toml"])
@pytest.mark.parametrize("command", ["print-front", "print-host"])
def test_a_bad_inventory_is_one_line_naming_the_file_and_key_exit_2(tmp_path, text, key,
                                                                     command):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    done = deploy(command, str(path), *(["h1"] if command == "print-host" else []))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"taskrunner-deploy: {path}: "), done.stderr
    assert key in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_a_missing_inventory_and_an_unknown_host_are_one_line_exit_2(tmp_path):
    done = deploy("print-front", str(tmp_path / "none.toml"))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"taskrunner-deploy: {tmp_path}/none.toml: No such file or directory\n"
    done = deploy("print-host", EXAMPLE, "h9")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "taskrunner-deploy: no host 'h9' in the inventory (hosts: h1, h2)\n"


def test_a_bad_flag_value_exits_2_naming_the_setting():
    done = deploy("print-stack", "nginx", "--tls-cert", "c.pem")
    assert (done.returncode, done.stdout) == (2, "")
    assert "tls_cert and tls_key go together" in done.stderr
    done = deploy("print-stack", "nginx", "--base-port", "65534")
    assert done.returncode == 2 and "go past 65535" in done.stderr
