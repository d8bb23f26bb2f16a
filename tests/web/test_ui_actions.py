"""The page's action forms in a real Chromium against a real instance with --actions: a
form per action built from its schema (a select for an enum, a checkbox for a flag, a
list for an array), filled and started, then the job's view with its output; a refused
value shown under the form; an instance without actions shows none."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browser import Page, headless_chromium, screenshot_failed
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

TOKEN = "ui-actions-token"
ACTIONS = r'''
[actions.deploy]
description = "Deploy to an environment"
args = ["/bin/echo", "deploy", "--env={env}", "{force}", "{hosts}", "n={count}", "{note}"]

[actions.deploy.params.env]
type = "string"
enum = ["staging", "prod"]

[actions.deploy.params.force]
type = "boolean"
flag = "--force"
default = false

[actions.deploy.params.hosts]
type = "array"
pattern = "[a-z0-9.]+"
max_items = 3
default = []

[actions.deploy.params.count]
type = "integer"
minimum = 1
maximum = 5
default = 1

[actions.deploy.params.note]
type = "string"
pattern = "[a-z ]*"
default = "none"
'''


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        yield driver


@pytest.fixture
def page(chromium: WebDriver, spawn_instance: Any, tmp_path: Any,
         request: pytest.FixtureRequest) -> Iterator[Page]:
    path = tmp_path / "actions.toml"
    path.write_text(ACTIONS)
    child = spawn_instance("--actions", str(path), env={"TASKRUNNER_TOKEN": TOKEN})
    failed_before = request.session.testsfailed
    yield Page(chromium, child.url, TOKEN)
    if request.session.testsfailed > failed_before:
        screenshot_failed(chromium, request)
    chromium.get("about:blank")


def test_an_action_form_is_built_from_its_schema_filled_and_started(page):
    page.open()
    page.log_in()
    form = page.until(lambda: page.shown("form[data-action=deploy]"), "no form for deploy")
    assert "Deploy to an environment" in form.text
    env = Select(page.find("#action-deploy-env"))
    assert [o.text for o in env.options] == ["staging", "prod"]
    assert page.find("#action-deploy-force").get_attribute("type") == "checkbox"
    assert page.find("#action-deploy-hosts").tag_name == "textarea"
    assert page.find("#action-deploy-count").get_attribute("type") == "number"
    # A value the instance refuses: its message under the form, nothing started.
    page.find("#action-deploy-note").send_keys("Semi; colon")
    form.find_element("css selector", "button[type=submit]").click()
    error = page.until(lambda: page.shown("form[data-action=deploy] .error"), "no error")
    assert "invalid_param" in error.text and "parameter note must match" in error.text
    page.find("#action-deploy-note").clear()
    env.select_by_visible_text("prod")
    page.find("#action-deploy-force").click()
    page.find("#action-deploy-hosts").send_keys("web1\nweb2")
    page.find("#action-deploy-count").send_keys("3")
    form.find_element("css selector", "button[type=submit]").click()
    # Start opens the job's view, its output following, as the start form does.
    page.until(lambda: page.driver.current_url.split("#", 1)[-1].startswith("/jobs/"),
               "the job's view did not open")
    page.until(lambda: page.find("#job-state").text == "exited", "the job did not end")
    assert page.output_text() == "deploy --env=prod --force web1 web2 n=3 none"
    job_id = page.driver.current_url.rsplit("/", 1)[-1]
    job = page.api("GET", f"/jobs/{job_id}")
    assert (job["action"], job["params"]) == ("deploy", {
        "env": "prod", "force": True, "hosts": ["web1", "web2"], "count": 3, "note": "none"})


def test_without_actions_the_section_stays_hidden(chromium, spawn_instance):
    child = spawn_instance(env={"TASKRUNNER_TOKEN": TOKEN})
    page = Page(chromium, child.url, TOKEN)
    page.open()
    page.log_in()
    page.until(lambda: page.shown("#start-form"), "the list did not show")
    assert page.api("GET", "/actions") == {"actions": []}
    assert not page.shown("#actions")
    chromium.get("about:blank")
