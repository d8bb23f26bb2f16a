"""What a command finds in its environment, as a caller and an operator see it: a clean one
(PATH, LANG, LC_*, TZ, HOME), what --pass-env names, and the request's env, never the
instance's secrets nor what a service manager handed it; through /run and jobs, sandboxed
(bubblewrap) and not; and no index password anywhere a --user command can look."""

import os
import pwd
import shutil
import subprocess

import pytest
from helpers import PY, REPO, post_run_blocking, submit, wait_done

is_root = os.geteuid() == 0
BWRAP = shutil.which("bwrap")
SECRET = "s3cret-do-not-leak"
# What an instance may be started with: secrets of its own, and a service manager's names.
HOSTILE = {
    "PGPASSWORD": SECRET, "TASKRUNNER_TOKEN_HINT": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET,
    "NOTIFY_SOCKET": f"/run/{SECRET}", "LISTEN_FDS": "1", "LISTEN_PID": "1",
    "LISTEN_FDNAMES": SECRET, "INVOCATION_ID": SECRET, "JOURNAL_STREAM": "8:1234",
    "WATCHDOG_USEC": "1000000", "CREDENTIALS_DIRECTORY": f"/run/{SECRET}",
    "LC_ALL": "C.UTF-8", "TZ": "Europe/Paris", "HOME": "/root-of-the-instance",
}


def allowed(name):
    # TRACEPARENT: the request's trace context (docs/api.md), every command has it.
    return (name in ("PATH", "LANG", "TZ", "HOME", "TRACEPARENT", "TRACESTATE")
            or name.startswith("LC_"))


def environment(stdout):
    """``env -0``'s output as a dict."""
    return dict(item.split("=", 1) for item in stdout.split("\0") if item)


def run_env(port, **extra):
    code, body = post_run_blocking(port, {"args": ["env", "-0"], **extra})
    assert code == 200 and body["status"] == 0, body
    return environment(body["stdout"])


def test_a_command_sees_only_the_clean_environment(spawn_instance):
    child = spawn_instance(env=HOSTILE)
    env = run_env(child.port)
    assert all(allowed(name) for name in env), sorted(env)
    assert env["PATH"] == os.environ["PATH"] and env["TZ"] == "Europe/Paris"
    assert env["LC_ALL"] == "C.UTF-8" and env["HOME"] == "/root-of-the-instance"
    assert SECRET not in "".join(f"{k}={v}" for k, v in env.items())


@pytest.mark.gen_test
async def test_a_job_sees_the_same_environment_and_its_request_env_wins(spawn_instance):
    child = spawn_instance("--pass-env", "MY_SETTING", env={**HOSTILE, "MY_SETTING": "one"})
    job = await submit(child, {"args": ["env", "-0"],
                               "env": {"TZ": "UTC", "MINE": "two", "MY_SETTING": "three"}})
    job = await wait_done(child, job["id"])
    assert job["state"] == "exited" and job["status"] == 0, job
    env = environment(job["stdout"])
    assert sorted(name for name in env if not allowed(name)) == ["MINE", "MY_SETTING"]
    assert (env["TZ"], env["MINE"], env["MY_SETTING"]) == ("UTC", "two", "three")


def test_pass_env_passes_a_name_of_the_instances(spawn_instance):
    child = spawn_instance("--pass-env", "MY_SETTING", "--pass-env", "UNSET_NAME",
                           env={**HOSTILE, "MY_SETTING": "one", "OTHER": "x"})
    env = run_env(child.port)
    assert env["MY_SETTING"] == "one"
    assert "OTHER" not in env and "UNSET_NAME" not in env
    # A request's env reaches only its own command.
    assert run_env(child.port, env={"PGPASSWORD": "mine"})["PGPASSWORD"] == "mine"
    assert "PGPASSWORD" not in run_env(child.port)


@pytest.mark.parametrize("name", ["NOTIFY_SOCKET", "LISTEN_FDS", "WATCHDOG_USEC",
                                  "PGPASSWORD", "TASKRUNNER_TOKEN", "NOT-A-NAME"])
def test_pass_env_refuses_what_no_command_may_get_in_one_line(name):
    done = subprocess.run([PY, "-m", "taskrunner", "--port", "0", "--pass-env", name],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and f"--pass-env {name}" in done.stderr.replace(
        "'", ""), done.stderr


@pytest.mark.skipif(BWRAP is None, reason="bubblewrap (bwrap) is not installed")
def test_a_sandboxed_command_sees_only_the_clean_environment(spawn_instance):
    child = spawn_instance("--sandbox", env=HOSTILE)
    env = run_env(child.port)
    # bubblewrap says where it made the command start (its work directory) in PWD.
    assert sorted(name for name in env if not allowed(name)) == ["PWD", "TMPDIR"]
    assert env["TMPDIR"] == "/tmp" and env["TZ"] == "Europe/Paris"
    assert env["TRACEPARENT"].startswith("00-")  # the trace context, sandboxed too
    assert SECRET not in "".join(f"{k}={v}" for k, v in env.items())


@pytest.mark.skipif(not is_root, reason="--user needs root")
@pytest.mark.parametrize("sandbox", [False, True] if BWRAP else [False],
                         ids=["plain", "sandbox"][:2 if BWRAP else 1])
def test_a_user_command_gets_that_users_home(spawn_instance, sandbox):
    child = spawn_instance("--user", "nobody", *(["--sandbox"] if sandbox else []),
                           env=HOSTILE)
    env = run_env(child.port)
    nobody = pwd.getpwnam("nobody")
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (nobody.pw_dir, "nobody", "nobody")
    extra = {"USER", "LOGNAME", *(["TMPDIR", "PWD"] if sandbox else [])}
    assert {name for name in env if not allowed(name)} == extra
    assert SECRET not in "".join(f"{k}={v}" for k, v in env.items())


@pytest.mark.skipif(not is_root, reason="--user needs root")
def test_a_user_command_finds_no_index_password_anywhere(spawn_instance, postgres,
                                                         state_url_file):
    # PGPASSWORD in the instance's environment too: libpq would use it, and a command of
    # the instance's must not see it.
    # Named, the instance opens its index before it listens: it listens, so it uses it.
    child = spawn_instance("--instance", "nosy", "--user", "nobody", "--state-url-file",
                           state_url_file, env={"PGPASSWORD": postgres.password})
    pid = child.proc.pid
    code, body = post_run_blocking(child.port, {"args": ["sh", "-c",
        f"cat /proc/{pid}/cmdline; cat /proc/{pid}/environ; env; cat {state_url_file}; "
        f"cat {postgres.pgpass}; cat {postgres.url_file}; cat \"$PGPASSFILE\"; exit 0"]})
    assert code == 200, body
    seen = body["stdout"] + body["stderr"]
    assert f"/proc/{pid}/environ: Permission denied" in seen  # root's, and nobody's not
    assert "taskrunner" in seen  # the command line was read
    assert postgres.password not in seen


def test_a_password_in_state_url_is_refused_in_one_line():
    done = subprocess.run([PY, "-m", "taskrunner", "--port", "0", "--state-url",
                           "postgresql://u:pw@127.0.0.1/db"], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert "state_url must not carry a password" in done.stderr.splitlines()[-1]


@pytest.mark.parametrize("mode,text,message", [
    (0o644, "postgresql://u:pw@h/db", "group or others may read or write it (mode 0644)"),
    (0o620, "postgresql://u:pw@h/db", "group or others may read or write it (mode 0620)"),
    (0o600, "not a url", "expected one postgresql:// URL"),
])
def test_a_state_url_file_others_may_read_is_refused_in_one_line(tmp_path, mode, text,
                                                                  message):
    path = tmp_path / "url"
    path.write_text(text + "\n")
    path.chmod(mode)
    done = subprocess.run([PY, "-m", "taskrunner", "--port", "0", "--state-url-file",
                           str(path)], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert "pw" not in done.stderr


def test_state_url_and_state_url_file_together_are_refused(tmp_path):
    done = subprocess.run([PY, "-m", "taskrunner", "--port", "0", "--state-url",
                           "postgresql://u@h/db", "--state-url-file", str(tmp_path / "url")],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "give one of state_url, state_url_file and state_dir" in done.stderr
