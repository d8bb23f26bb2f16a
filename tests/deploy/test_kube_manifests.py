"""``taskrunner-deploy print-kube`` as an operator runs it: every manifest it prints passes
Kubernetes' own schemas (kubernetes-validate, offline, strict: an unknown field fails too),
for the oldest and the newest release the package has; the pods are what the issue asks
(non-root, read-only, probes, the preStop sleep inside the grace); the flags of the
ConfigMap become the instance's argv in a real shell; a mistake is one line and exit 2.

The manifests played for real by podman are in tests/deploy/test_kube_play.py.
"""

from __future__ import annotations

import copy
import os
import stat
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from helpers import REPO

from taskrunner.deploy import kube

VERSIONS = ("1.25.0", "1.37.0")
"""The oldest and the newest Kubernetes whose schemas kubernetes-validate ships."""
TOKEN = "kube-test-token-9d3e"
URL = "postgresql://tr:pw-7f2a@db.example:5432/jobs"


def deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "taskrunner.deploy", "print-kube", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def secrets(tmp_path):
    """The token file and the index URL file, as an operator keeps them (0600)."""
    token, url = tmp_path / "token", tmp_path / "state-url"
    token.write_text(TOKEN + "\n")
    url.write_text(URL + "\n")
    for path in (token, url):
        path.chmod(0o600)
    return str(token), str(url)


def printed(*args: str) -> dict[str, dict]:
    done = deploy(*args)
    assert done.returncode == 0, done.stderr
    documents = list(yaml.safe_load_all(done.stdout))
    kinds = [d["kind"] for d in documents]
    assert len(set(kinds)) == len(kinds), kinds
    return {d["kind"]: d for d in documents}


def pod(objects: dict[str, dict]) -> dict:
    return objects["Deployment"]["spec"]["template"]["spec"]


def container(objects: dict[str, dict]) -> dict:
    (only,) = pod(objects)["containers"]
    return only


def argv(objects: dict[str, dict], stand_in: str) -> list[str]:
    """The instance's argv in the pod, as the container's own shell makes it from the
    ConfigMap: a stand-in ``taskrunner`` first on PATH prints each word on a line."""
    env = {"PATH": f"{stand_in}:/usr/bin:/bin", "POD_NAME": "taskrunner-7d9f-x2x9z"}
    for variable in container(objects)["env"]:
        ref = variable["valueFrom"].get("configMapKeyRef")
        if ref:
            assert ref["name"] == objects["ConfigMap"]["metadata"]["name"]
            env[variable["name"]] = objects["ConfigMap"]["data"][ref["key"]]
    command = container(objects)["command"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=10,
                          check=True)
    return done.stdout.split("\0")[:-1]


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> str:
    """A directory whose ``taskrunner`` prints its arguments, each ended by a NUL."""
    directory = str(tmp_path_factory.mktemp("bin"))
    path = os.path.join(directory, kube.ENTRY)
    with open(path, "w") as file:
        file.write('#!/bin/sh\nfor word; do printf "%s\\0" "$word"; done\n')
    os.chmod(path, stat.S_IRWXU)
    return directory


@pytest.mark.parametrize("variant", ["one pod", "postgresql", "podman"])
def test_every_manifest_passes_the_kubernetes_schemas(secrets, tmp_path, variant):
    token, url = secrets
    args = {"one pod": ["--token-file", token],
            "postgresql": ["--token-file", token, "--state-url-file", url, "--replicas", "3",
                           "--namespace", "jobs", "--instance-args", "--grace 20"],
            "podman": ["--secret-dir", str(tmp_path), "--host-port", "18080"]}[variant]
    objects = printed(*args)
    expected = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    assert set(objects) == expected | ({"Secret"} if variant != "podman" else set())
    for document in objects.values():
        for version in VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("break_it,complaint", [
    (lambda d: d["spec"].pop("selector"), "'selector' is a required property"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
     .update(porrt=8080), "'porrt' was unexpected"),
    (lambda d: d["spec"].update(replicas="2"), "'2' is not of type 'integer'"),
])
def test_a_broken_manifest_fails_the_schemas(secrets, break_it, complaint):
    deployment = printed("--token-file", secrets[0])["Deployment"]
    kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
    broken = copy.deepcopy(deployment)
    break_it(broken)
    with pytest.raises(kubernetes_validate.ValidationError, match=complaint):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_the_pods_run_non_root_read_only_with_probes_and_a_drain_inside_the_grace(secrets):
    objects = printed("--token-file", secrets[0], "--pre-stop", "7", "--stop-wait", "40")
    spec, main = pod(objects), container(objects)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the image's user
    assert main["securityContext"] == {"allowPrivilegeEscalation": False, "privileged": False,
                                       "readOnlyRootFilesystem": True,
                                       "capabilities": {"drop": ["ALL"]}}
    assert main["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["startupProbe"]["httpGet"]["path"] == "/livez"
    assert main["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    assert spec["terminationGracePeriodSeconds"] == 7 + 40
    # Writable: the job index's and /tmp's emptyDirs, nothing else.
    writable = {m["mountPath"] for m in main["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/lib/taskrunner", "/tmp"}
    assert main["resources"]["limits"]["memory"] == main["resources"]["requests"]["memory"]
    assert spec["enableServiceLinks"] is False  # no TASKRUNNER_SERVICE_HOST in its env
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_the_configmap_flags_become_the_argv_and_no_secret_is_on_it(secrets, stand_in):
    token, url = secrets
    objects = printed("--token-file", token, "--state-url-file", url, "--replicas", "2",
                      "--namespace", "jobs", "--name", "tr",
                      "--instance-args", "--allowed-host 'tr.example.com' --grace 20")
    words = argv(objects, stand_in)
    def value(flag: str) -> str:
        return words[words.index(flag) + 1]
    assert value("--address") == "0.0.0.0" and value("--port") == str(kube.PORT)
    assert "--insecure-http" in words  # TLS ends at the ingress
    assert value("--token-file") == f"{kube.SECRET_MOUNT}/token"
    assert value("--state-url-file") == f"{kube.SECRET_MOUNT}/state-url"
    assert "--state-dir" not in words
    assert words[-2:] == ["--instance", "taskrunner-7d9f-x2x9z"]  # each pod its own name
    hosts = [words[i + 1] for i, word in enumerate(words) if word == "--allowed-host"]
    assert hosts == ["tr", "tr.jobs", "tr.jobs.svc", "tr.jobs.svc.cluster.local",
                     "tr.example.com"]
    assert value("--grace") == "20"
    # The secrets are in the Secret alone.
    assert objects["Secret"]["stringData"] == {"token": TOKEN, "state-url": URL}
    for kind, document in objects.items():
        if kind != "Secret":
            assert TOKEN not in str(document) and "pw-7f2a" not in str(document), kind


def test_one_pod_keeps_its_jobs_on_its_emptydir(secrets, stand_in):
    words = argv(printed("--token-file", secrets[0]), stand_in)
    assert words[words.index("--state-dir") + 1] == "/var/lib/taskrunner/index"


def test_changed_flags_roll_the_pods(secrets):
    def digest(*args: str) -> str:
        template = printed("--token-file", secrets[0], *args)["Deployment"]["spec"]["template"]
        return template["metadata"]["annotations"]["taskrunner/flags-sha256"]
    assert digest() == digest()
    assert digest() != digest("--instance-args", "--grace 20")


@pytest.mark.parametrize("args,message", [
    (["--replicas", "2"], "replicas above 1 need the PostgreSQL index"),
    (["--secret-dir", "/s", "--host-port", "8080", "--replicas", "2", "--state-url-file",
      "u"], "host_port: the pods of one node would collide on it"),
    (["--memory", "lots"], "memory: 'lots' is not a Kubernetes quantity"),
    (["--name", "Task_Runner"], "name must be a DNS label"),
    (["--uid", "0"], "uid must be >= 1"),
    (["--instance-args", "--allowed-host 'x"], "instance_args: No closing quotation"),
    (["--instance-args", "--allow 'a\nb'"], "instance_args: a word may not hold a line"),
    ([], "--token-file is required"),
    (["--token-file", "/nonexistent/token"], "cannot read it: No such file or directory"),
])
def test_a_mistake_is_one_line_and_exit_2(args, message):
    done = deploy(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert message in done.stderr.splitlines()[-1], done.stderr


def test_a_url_file_that_holds_no_url_is_refused(secrets, tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("host=db password=pw\n")
    done = deploy("--token-file", secrets[0], "--state-url-file", str(bad))
    assert done.returncode == 2 and "expected one postgresql:// URL" in done.stderr
    assert "pw" not in done.stderr


@pytest.mark.parametrize("text", ["plain", "0440", "yes", "a: b", "- x", "#c", "x\n y",
                                  "one\ntwo\n", "tab\there", "ünï", "", "1.5", "null",
                                  "trailing \nspace", "end\n\n"])
def test_the_yaml_text_reads_back_as_the_data(text):
    from taskrunner.deploy.yamltext import Octal, dump_all
    data = [{"k": text, "list": [text, {"in": [text]}, []], "mode": Octal(0o440),
             "n": 3, "b": False, "empty": {}}]
    assert list(yaml.safe_load_all(dump_all(data))) == [dict(data[0], mode=0o440)]
