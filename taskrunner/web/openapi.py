"""The OpenAPI 3 document an instance serves at ``/openapi.json``."""

from __future__ import annotations

import functools
import json
from importlib.resources import files
from typing import Any


@functools.cache
def _packaged() -> bytes:
    # Package data: read once per process, not once per request.
    return files("taskrunner.web").joinpath("openapi.json").read_bytes()


def document(max_timeout: float) -> dict[str, Any]:
    """The packaged document with this instance's own ``--max-timeout`` as the maximum
    ``timeout`` a request may ask for."""
    doc: dict[str, Any] = json.loads(_packaged())
    timeout = doc["components"]["schemas"]["CommandRequest"]["properties"]["timeout"]
    timeout["maximum"] = max_timeout
    return doc
