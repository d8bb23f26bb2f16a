"""``taskrunner-deploy print-systemd``: the units systemd itself accepts
(``systemd-analyze verify``, no warning), with the options docs/deploy.md promises, and the
hardening they carry kept compatible with what the instance does (``NoNewPrivileges``
under ``--user`` and ``--sandbox``). No systemd as PID 1 is needed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import pytest
from helpers import PY, REPO, post_run_blocking

from taskrunner.deploy.cli import main

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None and not os.environ.get("CI"),
    reason="systemd-analyze missing (Debian's systemd package: scripts/install)")


def deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "taskrunner.deploy", "print-systemd", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def render(directory, *args: str) -> tuple[str, str]:
    """Both units in ``directory`` as systemd finds them; their texts."""
    texts = []
    for unit in ("service", "socket"):
        done = deploy(unit, *args)
        assert done.returncode == 0 and not done.stderr, done.stderr
        (directory / f"taskrunner@.{unit}").write_text(done.stdout)
        texts.append(done.stdout)
    return texts[0], texts[1]


def verify(directory, port: int = 18885) -> subprocess.CompletedProcess[str]:
    # An instance of each template: systemd loads taskrunner@.service for taskrunner@N.service.
    return subprocess.run(
        [str(ANALYZE), "verify", str(directory / f"taskrunner@{port}.socket"),
         str(directory / f"taskrunner@{port}.service")],
        capture_output=True, text=True, timeout=60, check=False)


def options(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@needs_analyze
def test_the_units_pass_systemd_analyze_verify_without_a_warning(tmp_path):
    # ExecStart's program must exist for verify: this test environment's interpreter.
    service, socket = render(tmp_path, "--python", PY)
    done = verify(tmp_path)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    got = options(service)
    for key, value in {"Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30",
                       "KillMode": "control-group", "KillSignal": "SIGTERM",
                       "TimeoutStopSec": "30s", "Delegate": "yes", "User": "taskrunner",
                       "ProtectSystem": "strict", "ProtectHome": "read-only",
                       "PrivateTmp": "yes", "NoNewPrivileges": "yes",
                       "StateDirectory": "taskrunner", "RuntimeDirectory": "taskrunner",
                       "Restart": "always"}.items():
        assert got.get(key) == [value], (key, got.get(key))
    assert got["ExecStart"][0].startswith(f"{PY} -m taskrunner --address 127.0.0.1 --port %i ")
    assert options(socket)["ListenStream"] == ["127.0.0.1:%i"]
    assert options(socket)["Accept"] == ["no"]


@needs_analyze
def test_a_typo_in_a_unit_is_what_verify_reports(tmp_path):
    # The test above can fail: systemd-analyze says so for an option it does not know, and
    # for an ExecStart that does not exist.
    service, _ = render(tmp_path, "--python", "/nonexistent/python3")
    (tmp_path / "taskrunner@.service").write_text(
        service.replace("ProtectSystem=", "ProtectSystm="))
    done = verify(tmp_path)
    assert "Unknown key 'ProtectSystm'" in done.stderr
    assert "/nonexistent/python3 is not executable" in done.stderr and done.returncode != 0


@needs_analyze
def test_settings_change_the_units_and_ipv6_is_bracketed(tmp_path):
    service, socket = render(tmp_path, "--python", PY, "--address", "::1", "--watchdog-sec",
                             "0", "--unit-user", "", "--stop-wait", "45")
    done = verify(tmp_path)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    got = options(service)
    assert "WatchdogSec" not in got and "User" not in got
    assert got["TimeoutStopSec"] == ["45s"]
    assert "--address ::1 --port %i" in got["ExecStart"][0]
    assert options(socket)["ListenStream"] == ["[::1]:%i"]


@pytest.mark.parametrize(("bad", "said"), [
    (["--unit-user", "a b"], "unit_user: 'a b' is not a user name"),
    (["--watchdog-sec", "-1"], "watchdog_sec must be >= 0"),
    (["--address", "1.2.3.4; rm"], "address: '1.2.3.4; rm' is not an address"),
    (["--stop-wait", "0"], "stop_wait must be >= 1")])
def test_a_bad_setting_is_one_line_and_exit_2(bad, said, capsys):
    # In this process: the command line's parser and checks, without an interpreter's start.
    with pytest.raises(SystemExit) as exited:
        main(["print-systemd", "service", *bad])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines()[-1] == f"taskrunner-deploy: error: {said}", err


def test_no_new_privileges_keeps_user_and_sandbox_working(spawn_instance):
    # The unit sets NoNewPrivileges=yes; --user drops privileges with setpriv and --sandbox
    # runs bubblewrap (not setuid in Debian): both work under no_new_privs.
    if os.geteuid() != 0 or shutil.which("bwrap") is None:
        pytest.skip("--user needs root and --sandbox bubblewrap (scripts/install)")
    child = spawn_instance("--user", "nobody", "--sandbox", wrapper=["setpriv", "--no-new-privs"])
    status, body = post_run_blocking(
        child.port, {"args": ["sh", "-c", "id -un; grep NoNewPrivs /proc/self/status"]})
    assert status == 200, body
    assert body["stdout"].split() == ["nobody", "NoNewPrivs:", "1"], body


def test_the_command_line_systemd_would_run_starts_an_instance(spawn_instance, tmp_path):
    # ExecStart as systemd expands it: %i the port, $TASKRUNNER_INDEX the unit's default
    # (split into words), $TASKRUNNER_ARGS unset (no word); the directories systemd would
    # make (StateDirectory, RuntimeDirectory) made here under tmp_path.
    done = deploy("service", "--python", PY)
    got = options(done.stdout)
    index = got["Environment"][0].strip('"').partition("=")[2]
    words = []
    for word in shlex.split(got["ExecStart"][0]):
        if word == "$TASKRUNNER_INDEX":
            words += index.replace("/var/lib/taskrunner", str(tmp_path / "state")).split()
        elif word != "$TASKRUNNER_ARGS":
            words.append(word.replace("%i", "0").replace("/run/taskrunner", str(tmp_path)))
    assert words[:3] == [PY, "-m", "taskrunner"]
    (tmp_path / "state").mkdir(mode=0o700)
    child = spawn_instance(*words[3:])
    status, body = post_run_blocking(child.port, {"args": ["echo", "unit"]})
    assert status == 200 and body["stdout"] == "unit\n"
    assert (tmp_path / "state" / "jobs.sqlite3").exists()  # the host's shared index
