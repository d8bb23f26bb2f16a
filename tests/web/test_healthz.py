import json
import os

import pytest

from taskrunner import __version__


@pytest.mark.gen_test
async def test_healthz_reports_port_pid_running_and_version(instance):
    response = await instance.request("GET", "/healthz")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body)
    assert body == {"status": "ok", "port": instance.port, "pid": os.getpid(),
                    "running": 0, "version": __version__,
                    "instance": str(instance.port)}
