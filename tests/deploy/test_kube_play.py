"""The rendered Deployment and ConfigMap played for real by ``podman kube play`` (podman 4.3),
with the image built from this checkout: the pod comes up as the image's user on a
read-only root, ``/readyz`` and ``/run`` answer through its hostPort, its jobs carry the
pod's name, and ``podman kube down`` leaves no pod, container or volume.

podman 4.3 ignores the probes, runAsNonRoot, the Service and the PodDisruptionBudget (they
are checked against the schemas only: test_kube_manifests.py), and mounts a Secret's values
still base64-encoded, so the manifests are rendered with ``--secret-dir``: the token file
comes from a host directory, made as Kubernetes makes a Secret's for a non-root pod (root's,
group the pod's, 0440).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import REPO
from imageutil import TOKEN, Container, free_port, podman

UID = 10001


def render(tmp_path, image: str, name: str, port: int) -> str:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "token").write_text(TOKEN + "\n")
    for path, mode in ((secret, 0o750), (secret / "token", 0o440)):
        os.chown(path, 0, UID)
        path.chmod(mode)
    done = subprocess.run(
        [sys.executable, "-m", "taskrunner.deploy", "print-kube", "--name", name,
         "--image", image, "--secret-dir", str(secret), "--host-port", str(port)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    manifests = tmp_path / "taskrunner.yaml"
    manifests.write_text(done.stdout)
    return str(manifests)


def leftovers(name: str, volumes: list[str]) -> list[str]:
    """The pods, containers and volumes of the play that podman still has."""
    pods = podman("pod", "ps", "--format", "{{.Name}}").stdout.split()
    containers = podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
    left = [n for n in pods + containers if n.startswith(f"{name}-")]
    known = set(podman("volume", "ls", "--format", "{{.Name}}").stdout.split())
    return left + [v for v in volumes if v in known]


@pytest.mark.skipif(os.geteuid() != 0, reason="podman plays pods as root here, and the "
                    "secret's files are made root's, of the pod's group")
def test_the_deployment_plays_and_kube_down_leaves_nothing(taskrunner_image, tmp_path):
    name = f"trplay{os.getpid()}"  # a test session's own: podman's names are the machine's
    port = free_port()
    manifests = render(tmp_path, taskrunner_image, name, port)
    pod = f"{name}-pod-0"  # podman 4.3's name for a Deployment's first pod
    started = time.monotonic()
    volumes: list[str] = []
    try:
        podman("kube", "play", manifests)
        container = Container(f"{pod}-taskrunner", port, started)
        container.wait_ready()
        mounts = json.loads(podman("inspect", "--format", "{{json .Mounts}}",
                                   container.name).stdout)
        volumes = [m["Name"] for m in mounts if m["Type"] == "volume"]
        assert sorted(volumes) == [f"{name}-state", f"{name}-tmp"], mounts

        status, body = container.request("POST", "/run", {"args": ["id", "-u"]})
        assert (status, body["stdout"]) == (200, f"{UID}\n"), body
        status, body = container.request("POST", "/run", {"args": ["touch", "/x"]})
        assert "Read-only file system" in body["stderr"], body
        status, body = container.request("POST", "/run", {"args": ["true"]}, token=None)
        assert (status, body["error"]) == (401, "unauthorized"), body
        # The instance is named after its pod (the ConfigMap's flags, then --instance).
        status, body = container.request("POST", "/jobs", {"args": ["true"]})
        assert status == 202 and body["instance"] == pod, body

        pod_id = podman("pod", "inspect", "--format", "{{.Id}}", pod).stdout.strip()
        down = podman("kube", "down", manifests)
        assert pod_id and pod_id in down.stdout, down.stdout
        assert leftovers(name, volumes) == []
    finally:
        # A failure above must not leave the play behind (a no-op after kube down).
        podman("pod", "rm", "--force", "--time", "0", pod, check=False)
        for volume in volumes or [f"{name}-state", f"{name}-tmp"]:
            podman("volume", "rm", "--force", volume, check=False)
