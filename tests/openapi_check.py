"""Checks an HTTP response against taskrunner/web/openapi.json (used by every test's client).

A response passes when its path and method are documented and its status code is listed
for them (or, for a path or method that is not documented, when it is the 404 / 405 error
the default handlers give), its Content-Type is one the document lists, every header the
document marks required is there, and its body matches the schema. Bodies are decoded by
media type: ``application/json`` is one value; ``application/x-ndjson`` is one value per
line; ``text/event-stream`` is one JSON value per ``data:`` event; any other type (e.g.
``text/plain`` for a future ``/metrics``) is checked as one string. To cover a new
endpoint, document it in the JSON file: nothing here changes.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "taskrunner", "web", "openapi.json")
_URN = "urn:taskrunner:openapi"


class OpenAPIChecker:
    """The document, its path templates as patterns, and a schema validator per schema."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.registry = Registry().with_resource(
            _URN, Resource.from_contents(doc, default_specification=DRAFT202012))
        self.paths = [
            (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"),
             template)
            for template in doc["paths"]
        ]

    def template(self, path: str) -> str | None:
        for pattern, template in self.paths:
            if pattern.match(path):
                return template
        return None

    def validate(self, value: Any, schema: dict[str, Any], where: str) -> None:
        validator = Draft202012Validator(_rebase(schema), registry=self.registry)
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            raise AssertionError(
                f"{where}: body does not match the OpenAPI document: {errors[0].message}\n"
                f"value: {json.dumps(value)[:500]}")

    def check(self, method: str, url: str, code: int, headers: Any, body: bytes) -> None:
        """Raise AssertionError if the response is not what the document promises."""
        path = urlsplit(url).path
        where = f"{method} {path} -> {code}"
        template = self.template(path)
        operation = None if template is None else self.doc["paths"][template].get(method.lower())
        if operation is None:
            expected = 404 if template is None else 405
            # With a token configured, the token check comes first, on every route.
            assert code in (expected, 401), f"{where}: undocumented, so it must be a {expected}"
            self.validate(json.loads(body), {"$ref": "#/components/schemas/Error"}, where)
            return
        response = operation["responses"].get(str(code)) or operation["responses"].get("default")
        assert response is not None, f"{where}: status {code} is not documented"
        for name, header in response.get("headers", {}).items():
            if header.get("required"):
                assert name in headers, f"{where}: header {name} is missing"
                self.validate(headers[name], header["schema"], f"{where} header {name}")
        content = response.get("content")
        if not content:
            assert not body, f"{where}: documented without a body, but has one"
            return
        media = headers.get("Content-Type", "").split(";")[0].strip()
        assert media in content, f"{where}: Content-Type {media!r} is not documented"
        schema = content[media]["schema"]
        for item in _decode(media, body):
            self.validate(item, schema, where)


def _rebase(schema: dict[str, Any]) -> dict[str, Any]:
    # Local "#/components/..." references are resolved inside the whole document.
    text = json.dumps(schema).replace('"#/components/', f'"{_URN}#/components/')
    return dict(json.loads(text))


def _decode(media: str, body: bytes) -> list[Any]:
    text = body.decode("utf-8")
    if media == "application/json":
        return [json.loads(text)]
    if media == "application/x-ndjson":
        assert text.endswith("\n"), "NDJSON must end with a newline"
        return [json.loads(line) for line in text.splitlines()]
    if media == "text/event-stream":
        events = [event for event in text.split("\n\n") if event.strip()]
        items = []
        for event in events:
            data = [line[len("data: "):] for line in event.split("\n") if line.startswith("data: ")]
            assert data, f"an event without data: {event!r}"
            items.append(json.loads("\n".join(data)))
        return items
    return [text]


@functools.cache
def checker() -> OpenAPIChecker:
    """The checker for taskrunner/web/openapi.json, loaded once per test session."""
    with open(DOC_PATH) as f:
        return OpenAPIChecker(json.load(f))
