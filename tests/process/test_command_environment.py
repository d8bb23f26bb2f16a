"""A command's environment through the process layer's own API: the layers in their order,
and the engine's default, on both spawn paths (posix_spawn, and Popen for a cwd)."""

from __future__ import annotations

import pytest

from taskrunner.errors import StartupError
from taskrunner.process.engine import CommandSpec, ProcessEngine
from taskrunner.process.environment import (
    base_environment,
    check_pass_env,
    command_environment,
)

INSTANCE = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_TIME": "C", "TZ": "UTC",
            "HOME": "/root", "USER": "root", "PGPASSWORD": "s3cret", "NOTIFY_SOCKET": "/run/n",
            "TASKRUNNER_TOKEN": "t", "MINE": "m"}


def test_the_layers_base_then_pass_env_then_the_request():
    base = base_environment(INSTANCE, ["MINE"], home="/home/u")
    assert base == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_TIME": "C", "TZ": "UTC",
                    "HOME": "/home/u", "MINE": "m"}
    assert base_environment(INSTANCE)["HOME"] == "/root"
    assert command_environment(base, {"MINE": "r", "TZ": "CET"}) == {
        **base, "MINE": "r", "TZ": "CET"}
    assert command_environment(base, None) == base


def test_never_passed_names_are_refused_and_dropped():
    for name in ("NOTIFY_SOCKET", "WATCHDOG_PID", "LISTEN_FDNAMES", "PGPASSWORD",
                 "TASKRUNNER_TOKEN", "a=b"):
        with pytest.raises(StartupError):
            check_pass_env([name])
    check_pass_env(["MINE", "LC_ALL"])
    assert "NOTIFY_SOCKET" not in base_environment(INSTANCE, ["NOTIFY_SOCKET"])


@pytest.mark.parametrize("cwd", [None, "/"], ids=["posix_spawn", "popen"])
def test_the_engine_starts_commands_from_the_clean_environment(io_loop, monkeypatch, cwd):
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/n")

    async def run():
        engine = ProcessEngine(max_output=1 << 16)
        try:
            command = engine.start(CommandSpec(args=["env"], timeout=10, cwd=cwd,
                                               env={"MINE": "m"}))
            return await command.result
        finally:
            engine.close()

    result = io_loop.run_sync(run, timeout=30)
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines()}
    assert "MINE" in names and "PATH" in names
    assert names <= {"PATH", "LANG", "TZ", "HOME", "MINE"} | {
        n for n in names if n.startswith("LC_")}, names
