"""schemathesis against /openapi.json of a live instance: no 500, nothing off the schema.

The instance runs as a real child process with an allowlist of two harmless programs, so
whatever command lists schemathesis makes up, nothing but ``true`` and ``echo`` can run.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings


@pytest.fixture
def live_schema(spawn_instance):
    child = spawn_instance("--allow", "true", "--allow", "echo", "--max-timeout", "5",
                           "--default-timeout", "2")
    return schemathesis.openapi.from_url(f"{child.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("live_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_every_operation_conforms_to_the_openapi_document(case):
    response = case.call(timeout=15)
    assert response.status_code < 500, response.text
    case.validate_response(response)
