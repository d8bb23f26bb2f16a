"""schemathesis against a live instance: no 500, nothing off the OpenAPI document.

The operations come from the document the instance serves (`taskrunner.openapi.document`
with the instance's ``--max-timeout``), built when the module is collected; each generated
case is sent to a real child instance. The schema is not taken from a fixture
(``schemathesis.pytest.from_fixture``): that lazy path breaks on pytest 9.2 (``'Function'
object has no attribute '_nodeid'``), while eager parametrisation is the plugin's plain,
stable path.

The instance runs with an allowlist of two harmless programs, so whatever command lists
schemathesis makes up, nothing but ``true`` and ``echo`` can run.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from taskrunner.web import openapi

MAX_TIMEOUT = 5
schema = schemathesis.openapi.from_dict(openapi.document(MAX_TIMEOUT))


@pytest.fixture
def live_url(spawn_instance):
    child = spawn_instance("--allow", "true", "--allow", "echo", "--max-timeout", str(MAX_TIMEOUT),
                           "--default-timeout", "2")
    return child.url


@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_every_operation_conforms_to_the_openapi_document(case, live_url):
    response = case.call(base_url=live_url, timeout=15)
    assert response.status_code < 500, response.text
    case.validate_response(response)
