"""The container image, run with podman as an operator would: it answers ``/run`` from the
host through a published port, runs as its own user (not root), its health check is
``/readyz``, ``podman stop`` drains (a running command finishes and is answered) and the
container exits 0, and a start it must refuse (no token on its wildcard address) exits 1
with the reason."""

from __future__ import annotations

import threading
import time
from typing import Any

from helpers import wait_until
from imageutil import TOKEN, podman, running


def test_the_image_answers_run_as_a_non_root_user(taskrunner_image):
    with running(taskrunner_image) as container:
        container.wait_ready()
        status, body = container.request("POST", "/run", {"args": ["id", "-u"]})
        assert (status, body["stdout"], body["status"]) == (200, "10001\n", 0), body
        # The instance itself, seen from the host: podman top reads the container's
        # processes, and none of them is root.
        users = podman("top", container.name, "user").stdout.split()[1:]
        assert users and "root" not in users and set(users) == {"taskrunner"}, users
        # Without the token, nothing runs (the token is the only guard of a wildcard bind).
        status, body = container.request("POST", "/run", {"args": ["true"]}, token=None)
        assert (status, body["error"]) == (401, "unauthorized"), body


def test_the_health_check_is_readyz(taskrunner_image):
    inspect = podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}",
                     taskrunner_image).stdout
    assert "/readyz" in inspect, inspect
    with running(taskrunner_image) as container:
        container.wait_ready()
        done = podman("healthcheck", "run", container.name, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        state = podman("inspect", "--format", "{{.State.Health.Status}}", container.name)
        assert state.stdout.strip() == "healthy"


def test_podman_stop_drains_a_running_command_and_exits_0(taskrunner_image):
    with running(taskrunner_image) as container:
        container.wait_ready()
        answer: dict[str, Any] = {}

        def run_slow() -> None:
            try:
                answer["response"] = container.request(
                    "POST", "/run", {"args": ["sh", "-c", "sleep 2; echo drained"]})
            except OSError as exc:  # reset: the container was killed, not drained
                answer["error"] = exc

        client = threading.Thread(target=run_slow)
        client.start()
        try:
            assert wait_until(lambda: container.request("GET", "/healthz")[1]["running"] == 1,
                              timeout=20), "the command never started"
            started = time.monotonic()
            podman("stop", "--time", "30", container.name, timeout=60)
            stopped_in = time.monotonic() - started
        finally:
            client.join(60)
        assert "response" in answer, f"the caller got no answer: {answer.get('error')!r}"
        status, body = answer["response"]
        assert (status, body["stdout"], body["status"]) == (200, "drained\n", 0), body
        assert container.exit_code() == 0, container.logs()
        # SIGTERM, not the SIGKILL of the end of podman's stop timeout.
        assert stopped_in < 25, stopped_in
        assert "shutting down: waiting up to 8" in container.logs()


def test_a_container_without_a_token_exits_1_and_says_why(taskrunner_image):
    with running(taskrunner_image, token=None) as container:
        code = podman("wait", container.name, timeout=60).stdout.strip()
        assert code == "1", container.logs()
        assert "without a token" in container.logs()
        assert TOKEN not in container.logs()
