"""Kubernetes, one target of the renderer: a ConfigMap holding the instances' flags, a
Secret holding the token (and the PostgreSQL index's URL), a Deployment of pods that run one
instance each, a Service in front of them and a PodDisruptionBudget.

What the objects assume and why they are as they are is in docs/deploy.md ("Kubernetes");
the reasons that shape single fields are said where the field is made. The flags are one
word a line in the ConfigMap, which the container's shell splits at newlines only (no
globbing), so a value may hold spaces; the pod template carries the flags' hash, so that
``kubectl apply`` of changed flags rolls the pods.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from typing import Any

from taskrunner.deploy.settings import Settings
from taskrunner.deploy.yamltext import Octal, dump_all

__all__ = ["ENTRY", "PORT", "SECRET_MOUNT", "KubeError", "container_script", "deployment", "flags",
           "manifests", "render", "service_names"]

ENTRY = "taskrunner"
"""The instance's command in the image (on its PATH)."""
PORT = 8080
"""The instance's port in the pod: the image's own (its EXPOSE and health check)."""
SECRET_MOUNT = "/etc/taskrunner/secret"
"""Where the Secret's files (``token``, ``state-url``) are, in the container."""
STATE_MOUNT = "/var/lib/taskrunner"
FLAGS_KEY = "flags"
FLAGS_ENV = "TASKRUNNER_FLAGS"

_URL = re.compile(r"postgres(ql)?://\S+")


class KubeError(ValueError):
    """A file the manifests need cannot be used (one line)."""


def container_script() -> str:
    """The container's ``sh -c`` script: the flags split at newlines, the pod's name as the
    instance's (job ids carry it, so each pod's differ), then ``exec``, so that the
    kubelet's SIGTERM reaches the instance itself."""
    return ("set -f\nIFS='\n'\n"
            f'exec {ENTRY} ${FLAGS_ENV} --instance "$POD_NAME"\n')


def service_names(settings: Settings) -> list[str]:
    """The names a client in the cluster reaches the Service by (cluster.local's)."""
    svc = f"{settings.name}.{settings.namespace}.svc"
    return [settings.name, f"{settings.name}.{settings.namespace}", svc,
            f"{svc}.cluster.local"]


def flags(settings: Settings) -> list[str]:
    """The instance's command line in a pod, one word an item (the ConfigMap's text)."""
    words = ["--address", "0.0.0.0", "--port", str(PORT),
             # The Service's and the ingress's TLS is in front; the pod network is the
             # cluster's (docs/deploy.md, "Kubernetes").
             "--insecure-http",
             "--token-file", f"{SECRET_MOUNT}/token",
             "--log-format", "json"]
    if settings.state_url_file:
        words += ["--state-url-file", f"{SECRET_MOUNT}/state-url"]
    else:
        # A directory the instance makes 0700 in the pod's emptyDir.
        words += ["--state-dir", f"{STATE_MOUNT}/index"]
    for name in service_names(settings):
        words += ["--allowed-host", name]
    return words + shlex.split(settings.instance_args)


def _labels(settings: Settings) -> dict[str, str]:
    return {"app.kubernetes.io/name": "taskrunner",
            "app.kubernetes.io/instance": settings.name}


def _meta(settings: Settings, suffix: str = "") -> dict[str, Any]:
    return {"name": settings.name + suffix, "namespace": settings.namespace,
            "labels": _labels(settings)}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    # The probes need no token and pass the Host rule: the kubelet sends the pod's address,
    # one of the instance's own on a wildcard bind.
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
            "timeoutSeconds": 2, "failureThreshold": failures}


def _volume(settings: Settings, role: str) -> str:
    # Named after the objects: podman makes a volume of the machine's by this name.
    return f"{settings.name}-{role}"


def _secret_volume(settings: Settings) -> dict[str, Any]:
    if settings.secret_dir:
        return {"name": _volume(settings, "secret"), "hostPath": {"path": settings.secret_dir,
                                               "type": "Directory"}}
    # 0440 with fsGroup: Kubernetes makes a Secret's files root:fsGroup and at least 0440
    # anyway; the instance takes a root-owned file its group may read. optional: podman
    # 4.3 dereferences it without a check.
    return {"name": _volume(settings, "secret"), "secret": {"secretName": settings.name,
                                         "defaultMode": Octal(0o440), "optional": False}}


def _container(settings: Settings) -> dict[str, Any]:
    port: dict[str, Any] = {"name": "http", "containerPort": PORT,
                            "protocol": "TCP"}
    if settings.host_port:
        port.update(hostPort=settings.host_port, hostIP="127.0.0.1")
    return {
        "name": "taskrunner",
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", container_script()],
        "env": [
            {"name": FLAGS_ENV, "valueFrom": {"configMapKeyRef": {
                "name": settings.name, "key": FLAGS_KEY}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "ports": [port],
        # The startup probe holds the others off while the instance starts (waiting for
        # its index, say); liveness only asks that the event loop answers, readiness that
        # it is not starting or draining (an unreachable index leaves it ready: every pod
        # shares the index, and /run does not need it).
        "startupProbe": _probe("/livez", 1, 60),
        "livenessProbe": _probe("/livez", 10, 3),
        "readinessProbe": _probe("/readyz", 2, 2),
        # A deleted pod leaves the Service's endpoints while the kubelet stops it, and
        # kube-proxy and the ingress learn it a moment later: until then they still send
        # new connections. The sleep keeps the instance listening through that moment;
        # SIGTERM comes after it.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(settings.pre_stop)]}}},
        "resources": {"requests": {"cpu": settings.cpu, "memory": settings.memory},
                      "limits": {"cpu": settings.cpu_limit, "memory": settings.memory}},
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": _volume(settings, "secret"), "mountPath": SECRET_MOUNT,
             "readOnly": True},
            {"name": _volume(settings, "state"), "mountPath": STATE_MOUNT},
            {"name": _volume(settings, "tmp"), "mountPath": "/tmp"},
        ],
    }


def deployment(settings: Settings, text: str) -> dict[str, Any]:
    """The Deployment; ``text`` is the ConfigMap's flags, whose hash the pods carry."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(settings),
        "spec": {
            "replicas": settings.replicas,
            "selector": {"matchLabels": _labels(settings)},
            # A new pod first, then an old one goes: no fewer instances while rolling.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": _labels(settings),
                             "annotations": {"taskrunner/flags-sha256": digest}},
                "spec": {
                    # Service links would add TASKRUNNER_SERVICE_HOST, TASKRUNNER_PORT...
                    # to the environment, and the instance needs no API token.
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    # The kill comes this long after the preStop hook starts: the sleep,
                    # then the instance's grace and its last answers.
                    "terminationGracePeriodSeconds": settings.pre_stop + settings.stop_wait,
                    "securityContext": {
                        "runAsNonRoot": True, "runAsUser": settings.uid,
                        "runAsGroup": settings.uid, "fsGroup": settings.uid,
                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [_container(settings)],
                    "volumes": [
                        _secret_volume(settings),
                        {"name": _volume(settings, "state"),
                         "emptyDir": {"sizeLimit": "1Gi"}},
                        {"name": _volume(settings, "tmp"), "emptyDir": {"sizeLimit": "1Gi"}},
                    ],
                },
            },
        },
    }


def manifests(settings: Settings, token: str = "", state_url: str = "") -> list[dict[str, Any]]:
    """Every object, in the order ``kubectl apply`` wants them: the ConfigMap and the
    Secret (none with ``settings.secret_dir``) before the pods that read them."""
    text = "\n".join(flags(settings)) + "\n"
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(settings),
         "data": {FLAGS_KEY: text}}]
    if not settings.secret_dir:
        data = {"token": token, **({"state-url": state_url} if state_url else {})}
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": _meta(settings),
                        "type": "Opaque", "stringData": data})
    objects += [
        deployment(settings, text),
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(settings),
         "spec": {"type": "ClusterIP", "selector": _labels(settings),
                  "ports": [{"name": "http", "port": 80, "targetPort": "http",
                             "protocol": "TCP"}]}},
        # One pod at a time may be evicted (a node drained): with one replica a drain
        # still goes through, where minAvailable: 1 would block it for ever.
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": _meta(settings),
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(settings)}}},
    ]
    return objects


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KubeError(f"{what} {path!r}: cannot read it: "
                        f"{getattr(exc, 'strerror', None) or exc}") from None
    if not text:
        raise KubeError(f"{what} {path!r} is empty")
    return text


def render(settings: Settings) -> str:
    """The manifests' text; the Secret's values are read from ``--token-file`` and
    ``--state-url-file`` now. `KubeError` when one is missing or unusable."""
    if settings.secret_dir:
        return dump_all(manifests(settings))
    if not settings.token_file:
        raise KubeError("--token-file is required: the pods listen beyond loopback, where "
                        "the instances refuse to start without a token")
    token = _read(settings.token_file, "--token-file")
    state_url = ""
    if settings.state_url_file:
        state_url = _read(settings.state_url_file, "--state-url-file")
        if not _URL.fullmatch(state_url):
            raise KubeError(f"--state-url-file {settings.state_url_file!r}: expected one "
                            "postgresql:// URL")
    if any(not "\x21" <= char <= "\x7e" for char in token):
        raise KubeError(f"--token-file {settings.token_file!r}: a token is one line of "
                        "printable ASCII without spaces")
    return dump_all(manifests(settings, token, state_url))

