"""The OpenAPI 3 document an instance serves at ``/openapi.json``.

The packaged document (openapi.json) with what only the running instance knows: its
``--max-timeout``, and one operation per action of ``--actions`` (``/actions/<name>`` and
``/actions/<name>/jobs``), each with that action's parameters as its request schema, so
that tools (and schemathesis) can walk them. Made at each request: a reload may change the
actions.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib.resources import files
from typing import Any

from taskrunner.actions.actionfile import Action, Actions


@functools.cache
def _packaged() -> bytes:
    # Package data: read once per process, not once per request.
    return files("taskrunner.web").joinpath("openapi.json").read_bytes()


def document(max_timeout: float, actions: Actions | None = None) -> dict[str, Any]:
    """The packaged document with this instance's own ``--max-timeout`` as the maximum
    ``timeout`` a request may ask for, and an operation for each of ``actions``."""
    doc: dict[str, Any] = json.loads(_packaged())
    schemas = doc["components"]["schemas"]
    schemas["CommandRequest"]["properties"]["timeout"]["maximum"] = max_timeout
    schemas["ActionRequest"]["properties"]["timeout"]["maximum"] = max_timeout
    for action in (actions.actions.values() if actions is not None else ()):
        _add_action(doc, action, max_timeout)
    return doc


def _add_action(doc: dict[str, Any], action: Action, max_timeout: float) -> None:
    paths = doc["paths"]
    for suffix, template, request, operation_id in (
            ("", "/actions/{id}", "ActionRequest", "runAction"),
            ("/jobs", "/actions/{id}/jobs", "ActionJobRequest", "submitActionJob")):
        operation = copy.deepcopy(paths[template]["post"])
        del operation["parameters"]
        operation["operationId"] = f"{operation_id}_{action.name}"
        operation["summary"] = action.description or operation["summary"]
        schema = copy.deepcopy(doc["components"]["schemas"][request])
        params = action.json_schema()
        # null (or no params) is "no parameters given": all of them, when none is required.
        schema["properties"]["params"] = params if params["required"] else {
            "anyOf": [params, {"type": "null"}]}
        schema["properties"]["timeout"] = {
            "type": ["number", "null"], "exclusiveMinimum": 0,
            "maximum": action.timeout or max_timeout}
        if params["required"]:
            schema["required"] = ["params"]
            operation["requestBody"]["required"] = True
        operation["requestBody"]["content"]["application/json"]["schema"] = schema
        paths[f"/actions/{action.name}{suffix}"] = {"post": operation}
