"""The web page through the stack's nginx: its first look already shows the jobs of all four
instances, since they share one job index and any one of them answers for all.

Ports 18580 and 19385-19388.
"""

import json

import pytest
from browser import headless_chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from stackutil import needs_stack, request, running_stack

pytestmark = needs_stack()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(str(tmp_path_factory.mktemp("stack-ui")), 18580, 19385) as stack:
        yield stack


def test_the_page_shows_every_instances_jobs_from_one_answer(stack):
    owned = []
    for port in stack.ports:  # one job owned by each instance, asked of it directly
        status, _, body = request("127.0.0.1", port, "POST", "/jobs",
                                  {"args": ["echo", f"owned by {port}"]})
        assert status == 202, body
        owned.append(json.loads(body)["id"])
    with headless_chromium() as driver:
        driver.get(f"http://127.0.0.1:{stack.port}/ui")

        def rows():
            return sorted(row.get_attribute("data-id") for row in
                          driver.find_elements(By.CSS_SELECTOR, "#job-rows tr[data-id]"))

        # The table is drawn from the first GET /jobs one instance answered: all four.
        first = WebDriverWait(driver, 20).until(lambda _: rows())
        assert first == sorted(owned)
        driver.find_element(By.CSS_SELECTOR, f'#job-rows tr[data-id="{owned[2]}"] a').click()
        WebDriverWait(driver, 20).until(
            lambda _: f"owned by {stack.ports[2]}" in driver.find_element(By.ID, "output").text)
