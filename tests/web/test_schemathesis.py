"""schemathesis against a live instance: no 500, nothing off the OpenAPI document.

The operations come from the document the instance serves (`taskrunner.openapi.document`
with the instance's ``--max-timeout``), built when the module is collected; each generated
case is sent to a real child instance. The schema is not taken from a fixture
(``schemathesis.pytest.from_fixture``): that lazy path breaks on pytest 9.2 (``'Function'
object has no attribute '_nodeid'``), while eager parametrisation is the plugin's plain,
stable path.

The instance runs with an allowlist of two harmless programs, so whatever command lists
schemathesis makes up, nothing but ``true`` and ``echo`` can run; and with the actions of
schemathesis_actions.toml (echo, printf), whose operations the served document has too.
"""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from taskrunner.actions.actionfile import load_actions
from taskrunner.config import Config
from taskrunner.web import openapi

MAX_TIMEOUT = 5
ACTIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemathesis_actions.toml")
schema = schemathesis.openapi.from_dict(openapi.document(
    MAX_TIMEOUT, load_actions(ACTIONS, Config(max_timeout=MAX_TIMEOUT, default_timeout=2))))


@pytest.fixture
def live_url(spawn_instance):
    child = spawn_instance("--allow", "true", "--allow", "echo", "--max-timeout", str(MAX_TIMEOUT),
                           "--default-timeout", "2", "--actions", ACTIONS)
    return child.url


@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_every_operation_conforms_to_the_openapi_document(case, live_url):
    response = case.call(base_url=live_url, timeout=15)
    assert response.status_code < 500, response.text
    case.validate_response(response)


def test_stateful_runs_follow_a_new_job_through_the_links(live_url):
    """schemathesis' state machine starts jobs and, through links, polls, follows and
    cancels the very jobs it started, not made-up ids that answer 404. (schemathesis 4.32
    also infers these links from the ``id`` field; the document's own links, checked in
    test_openapi.py, are what other generators and stateful testers follow.)"""
    from schemathesis.specs.openapi.checks import negative_data_rejection, use_after_free

    followed = []

    class Workflow(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"base_url": live_url, "timeout": 15}

        def before_call(self, case):
            # The stateless test above covers made-up bodies; here the jobs must start, so
            # each runs the allowed echo (a made-up program, cwd, env or callback_url
            # would be refused before any job exists to follow).
            if (case.method == "POST" and isinstance(case.body, dict)
                    and not case.operation.path.startswith("/actions")):
                case.body["args"] = ["echo", "followed"]
                for field in ("cwd", "env", "callback_url"):
                    case.body.pop(field, None)

        def after_call(self, response, case):
            super().after_call(response, case)
            if case.operation.path.startswith("/jobs/{id}"):
                followed.append((case.method, case.operation.path, response.status_code))

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            assert response.status_code < 500, response.text
            # A cancelled job is kept (its id answers 200 with its final state), which
            # schemathesis' use-after-free check takes for a resource not deleted; a body
            # rewritten by before_call is valid, whatever it was generated as.
            case.validate_response(response, excluded_checks=[use_after_free,
                                                              negative_data_rejection],
                                   transport_kwargs=kwargs or None, recorder=self.recorder)

    Workflow.run(settings=settings(max_examples=15, stateful_step_count=4, deadline=None,
                                   suppress_health_check=list(HealthCheck)))
    assert {(method, path) for method, path, code in followed if code == 200} >= {
        ("GET", "/jobs/{id}"), ("DELETE", "/jobs/{id}"), ("GET", "/jobs/{id}/output")}
