"""What kind of JSON value a Python value decoded from JSON is, as an error message names
it ("a string", "an array"...): the request body's checks and the actions' parameters say
it the same way."""

from __future__ import annotations


def json_kind(value: object) -> str:
    """``null``, ``a boolean``, ``a number``, ``a string``, ``an array`` or ``an object``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
