"""The wheel built from the repo installs into a clean virtual environment and serves, and
holds the package alone (not the lab, the tests or the bench, which stay in the checkout).

Catches a module or data file (openapi.json, watchdog.sh, the page's ui/ files, the deploy
tools' templates) that works from the checkout but is missing from the wheel, and anything
beside the product (the bench tool, the lab) that gets into it. The build runs on a copy of
the repo's files (tracked, or new and not ignored), so no stale ``build/`` directory of the
checkout can add to the wheel.
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
import zipfile

from helpers import REPO, post_run_blocking, wait_until


def repo_files():
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True).stdout
    return [name for name in listed.decode().split("\0") if name]


def copy_repo(dest):
    for name in repo_files():
        source = os.path.join(REPO, name)
        if os.path.isfile(source):  # a deleted but still tracked file is skipped
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(source, os.path.join(dest, name))


def run(args, **kwargs):
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_for_port(log_path, proc, timeout=30.0):
    def started():
        with open(log_path) as f:
            output = f.read()
        assert proc.poll() is None, f"the instance exited:\n{output}"
        match = re.search(r"listening on \S+:(\d+)", output)
        return match and (int(match.group(1)), output)

    found = wait_until(started, timeout)
    assert found, "the instance did not start"
    return found


def test_the_wheel_installs_into_a_clean_venv_and_serves():
    with tempfile.TemporaryDirectory(prefix="taskrunner-wheel-") as tmp:
        source, wheels, venv = (os.path.join(tmp, d) for d in ("src", "wheels", "venv"))
        copy_repo(source)
        # No build isolation: the build backend (setuptools) comes from the test
        # environment, pinned like everything else, and nothing is fetched to build.
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--quiet", "--wheel-dir", wheels, source])
        (wheel,) = os.listdir(wheels)
        with zipfile.ZipFile(os.path.join(wheels, wheel)) as archive:
            names = set(archive.namelist())
        tops = {name.split("/", 1)[0] for name in names}
        # The product alone: the bench tool (bench/) is the repository's, not the user's.
        assert {top for top in tops if not top.endswith(".dist-info")} == {"taskrunner"}, tops
        for name in ("taskrunner/deploy/cli.py", "taskrunner/deploy/cluster.example.toml",
                     "taskrunner/deploy/templates/nginx.conf.template",
                     "taskrunner/deploy/templates/nginx-http.conf.template",
                     "taskrunner/deploy/templates/taskrunner@.service.template",
                     "taskrunner/deploy/templates/taskrunner@.socket.template"):
            assert name in names, f"{name} is not in the wheel"
        run([sys.executable, "-m", "venv", venv])  # no --system-site-packages
        python = os.path.join(venv, "bin", "python")
        pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        run([*pip, "--require-hashes", "-r", os.path.join(REPO, "requirements", "serve.txt")])
        run([*pip, "--no-deps", os.path.join(wheels, wheel)])
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        where = run([python, "-c", "import taskrunner; print(taskrunner.__file__)"],
                    cwd=tmp, env=env)
        assert where.startswith(venv), where  # the wheel's copy, not the checkout
        # The deploy tools, as an operator runs them: the console script and its templates.
        example = os.path.join(os.path.dirname(where.strip()), "deploy", "cluster.example.toml")
        front = run([os.path.join(venv, "bin", "taskrunner-deploy"), "print-front", example,
                     "--whole", "--run-dir", tmp], cwd=tmp, env=env)
        assert "upstream taskrunner_h1-8885 {" in front and f"pid {tmp}/nginx.pid;" in front
        log_path = os.path.join(tmp, "instance.log")
        with open(log_path, "wb") as log:
            # cwd outside the checkout: "python -m" puts the cwd first on sys.path.
            proc = subprocess.Popen([python, "-m", "taskrunner", "--port", "0"], cwd=tmp,
                                    env=env, stdout=log, stderr=log, start_new_session=True)
        try:
            port, output = wait_for_port(log_path, proc)
            assert "watchdog pid" in output  # watchdog.sh is in the wheel
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json",
                                        timeout=30) as response:
                assert response.status == 200
                assert b'"openapi"' in response.read()
            for path, text in (("/ui", b"<!doctype html>"), ("/ui/app.js", b"use strict"),
                               ("/ui/ui.css", b":root")):  # the page's files are in the wheel
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}",
                                            timeout=30) as response:
                    assert response.status == 200 and text in response.read(), path
            status, body = post_run_blocking(port, {"args": ["echo", "from the wheel"]})
            assert (status, body["stdout"]) == (200, "from the wheel\n")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
