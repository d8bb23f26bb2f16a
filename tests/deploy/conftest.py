"""The container image, built once for the session's tests that take `taskrunner_image`
(tests/imageutil.py says how), and removed after them; the local base stays cached."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from imageutil import IMAGE, Timings, image_session, skip_without_podman


@pytest.fixture(scope="session")
def image_build() -> Iterator[Timings]:
    """The seconds the session spent making the base and building the image."""
    skip_without_podman()
    with image_session() as timings:
        yield timings


@pytest.fixture(scope="session")
def taskrunner_image(image_build: Timings) -> str:
    """The name of the image built from this checkout (``localhost/taskrunner:test``)."""
    return IMAGE
