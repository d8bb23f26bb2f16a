import pytest
from conftest import with_config

from taskrunner.metrics import Metrics


def sample(text, name, **labels):
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.gen_test
@with_config(default_timeout=0.2)
async def test_metrics_count_commands_requests_timeouts_kills_and_spawn_failures(instance):
    await instance.run({"args": ["true"]})
    await instance.run({"args": ["sleep", "5"]})  # times out after 0.2 s
    await instance.run({"args": ["/nonexistent/program"]})
    response = await instance.request("GET", "/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.body.decode()
    port = str(instance.port)
    assert sample(text, "taskrunner_commands_started_total", instance=port) == 2
    assert sample(text, "taskrunner_command_timeouts_total", instance=port) == 1
    assert sample(text, "taskrunner_command_kills_total", instance=port) == 1
    assert sample(text, "taskrunner_command_spawn_failures_total", instance=port) == 1
    assert sample(text, "taskrunner_command_duration_seconds_count", instance=port) == 2
    assert sample(text, "taskrunner_commands_running", instance=port) == 0
    assert sample(text, "taskrunner_http_requests_total", instance=port, status="200") == 2
    assert sample(text, "taskrunner_http_requests_total", instance=port, status="422") == 1


def test_each_metrics_has_its_own_registry():
    a, b = Metrics("a"), Metrics("b")
    a.started.inc()
    assert sample(a.exposition().decode(), "taskrunner_commands_started_total", instance="a") == 1
    text = b.exposition().decode()
    assert sample(text, "taskrunner_commands_started_total", instance="b") == 0
    assert 'instance="a"' not in text
