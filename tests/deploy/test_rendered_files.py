"""The configs committed to the repository are the renderer's output, so that one source
(taskrunner/deploy/) holds each value: a test fails when they differ.

``supervisord -c supervisord.conf`` from a fresh clone is tests/stack/test_fresh_clone.py.
"""

from __future__ import annotations

import os

from helpers import REPO

from taskrunner.deploy.settings import Settings
from taskrunner.deploy.supervisord import repository_conf


def test_the_repositorys_supervisord_conf_is_a_fresh_render():
    with open(os.path.join(REPO, "supervisord.conf")) as f:
        committed = f.read()
    assert committed == repository_conf(Settings()), (
        "supervisord.conf differs from its render: python -m taskrunner.deploy "
        "print-supervisord > supervisord.conf (and change taskrunner/deploy/, not the file)")
