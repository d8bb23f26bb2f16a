"""The web page at /ui, in a real browser against a real instance with a token.

Debian's Chromium is driven by Selenium through Debian's chromedriver
(``/usr/bin/chromedriver``, named in the `Service`, so Selenium Manager never runs and
nothing is downloaded). Without them the browser tests are skipped, saying so; under ``CI``
they fail instead, so a machine without the browser cannot pass for a green run. Each
browser test saves a screenshot when it fails (the path is printed), and quits its
Chromium whatever happens. Every wait is a `WebDriverWait` with a deadline.

The files themselves and their caching headers: tests/web/test_page.py, without a browser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from browser import Page, headless_chromium, screenshot_failed
from helpers import wait_for
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from taskrunner import __version__

TOKEN = "ui-test-token"


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    """One headless Chromium for the module, in a fresh profile, quit at its end. Each test
    talks to an instance of its own on a port of its own: another origin, so nothing the
    page kept (the token in sessionStorage) carries over from the test before."""
    with headless_chromium() as driver:
        yield driver


@pytest.fixture
def browser(chromium: WebDriver, spawn_instance: Any,
            request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    """The module's Chromium for one test; a screenshot of the page if the test fails.

    It asks for `spawn_instance` so that the test's instances are stopped after the
    screenshot, which shows the page as the test saw it, not after its instance went away.
    """
    failed_before = request.session.testsfailed
    yield chromium
    # The test's outcome is counted before its fixtures are torn down.
    if request.session.testsfailed > failed_before:
        screenshot_failed(chromium, request)
    chromium.get("about:blank")  # leave the page: its streams and polls end here


@pytest.fixture
def page(browser: WebDriver, spawn_instance: Any) -> Page:
    child = spawn_instance("--allow", "sh", "--allow", "printf", "--allow", "sleep",
                           env={"TASKRUNNER_TOKEN": TOKEN})
    return Page(browser, child.url, TOKEN)


def test_start_takes_you_to_the_job_and_its_output_then_back_to_the_table(page):
    page.open()
    page.log_in()
    page.until(lambda: page.shown("#start-form"), "the form is not shown after the token")
    # /healthz names the instance only to a token holder: the page asks with the token.
    name = page.api("GET", "/healthz")["instance"]  # <port>, or <host name>-<port>
    page.until(lambda: page.find("#instance").text == f"instance {name} · {__version__}",
               "the header does not name the instance once the token is given")
    page.find("#args").send_keys("sh\n-c\necho from the form; echo \"$GREETING\"; cat")
    page.find("#env").send_keys("GREETING=hi")
    page.find("#stdin").send_keys("typed input")
    page.find("#start-form button[type=submit]").click()
    # Start opens the job: its id in the URL, its output following.
    page.until(lambda: "#/jobs/" in page.driver.current_url, "Start did not open the job")
    job_id = page.driver.current_url.split("#/jobs/", 1)[1]
    assert page.find("#job-id").text == job_id
    page.until(lambda: page.output_text() == "from the form\nhi\ntyped input",
               "the job's output did not show")
    page.until(lambda: page.find("#job-state").text == "exited")
    assert page.find("#job-env").text == "GREETING"  # its name; the value is not kept
    page.driver.back()
    row = page.until(lambda: page.shown(f'#job-rows tr[data-id="{job_id}"]'),
                     "the job is not in the table")
    assert row.find_element(By.CSS_SELECTOR, "td.cmd").text == (
        "sh -c 'echo from the form; echo \"$GREETING\"; cat'")
    assert row.find_elements(By.CSS_SELECTOR, "td")[5].text == "0"
    assert page.api("GET", f"/jobs/{job_id}")["stdout"] == "from the form\nhi\ntyped input"


def test_the_table_lists_each_job_once_after_a_job_page(page):
    ids = [page.api("POST", "/jobs", {"args": ["sh", "-c", f"echo {i}"]})["id"]
           for i in range(3)]
    page.open()
    page.log_in()
    rows = "#job-rows tr"
    page.until(lambda: len(page.driver.find_elements(By.CSS_SELECTOR, rows)) == 3)
    page.find(f'#job-rows tr[data-id="{ids[1]}"] a').click()
    page.until(lambda: page.find("#job-id").text == ids[1], "the link did not open the job")
    page.until(lambda: page.find("#job-state").text == "exited")
    page.driver.back()
    page.until(lambda: page.shown("#jobs"), "back did not show the list")
    newest_first = [e.get_attribute("data-id")
                    for e in page.driver.find_elements(By.CSS_SELECTOR, rows)]
    assert newest_first == ids[::-1]


def test_the_table_polls_a_page_of_cut_summaries_and_the_job_shows_its_args_whole(page):
    # 60 jobs, then one of 20 KB of args: the table asks for the newest 50, each command
    # a few KiB at most; "Older jobs" asks for the rest; the job's own view has it whole.
    for _ in range(60):
        page.api("POST", "/jobs", {"args": ["printf", ""]})
    big = ["printf", "%.0s", *("abcdefgh" * 256 for _ in range(10))]
    job = page.api("POST", "/jobs", {"args": big})
    page.open()
    page.log_in()
    rows = "#job-rows tr"
    page.until(lambda: len(page.driver.find_elements(By.CSS_SELECTOR, rows)) == 50,
               "the table does not show the newest 50")
    command = page.find(f'#job-rows tr[data-id="{job["id"]}"] td.cmd').text
    assert command.startswith("printf %.0s abcdefgh") and command.endswith(" …")
    assert len(command) < 4200, len(command)
    asked = page.driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter((e) => e.name.includes('/jobs?')).map((e) => [e.name, e.encodedBodySize])")
    assert asked and all(name.endswith("/jobs?limit=50") for name, _ in asked), asked
    assert max(size for _, size in asked) < 50 * 6 * 1024, asked
    newest = [e.get_attribute("data-id") for e in page.driver.find_elements(By.CSS_SELECTOR, rows)]
    # Older jobs: the next page by the listing's cursor, in the URL; back returns.
    page.find("#jobs-older").click()
    page.until(lambda: len(page.driver.find_elements(By.CSS_SELECTOR, rows)) == 11,
               "Older jobs did not show the 11 older ones")
    assert "before=" in page.driver.current_url
    older = [e.get_attribute("data-id") for e in page.driver.find_elements(By.CSS_SELECTOR, rows)]
    assert not set(older) & set(newest)
    page.until(lambda: not page.shown("#jobs-older"), "Older jobs stays on the last page")
    page.driver.back()
    page.until(lambda: [e.get_attribute("data-id") for e in
                        page.driver.find_elements(By.CSS_SELECTOR, rows)] == newest,
               "back did not return to the newest page")
    page.find(f'#job-rows tr[data-id="{job["id"]}"] a').click()
    page.until(lambda: page.find("#job-id").text == job["id"], "the link did not open the job")
    whole = page.until(lambda: page.find("#job-args").text, "the job's args are not shown")
    assert whole == "printf %.0s " + " ".join(big[2:]) and "…" not in whole


def test_the_form_is_used_with_the_keyboard_alone(page):
    page.open()
    page.log_in()
    args = page.until(lambda: page.shown("#args"))
    args.click()
    args.send_keys("sh\n-c\necho typed")
    # Tab through the form in reading order, to the Start button, and press it with Space.
    active = page.driver.switch_to.active_element
    order = []
    for _ in range(5):
        active.send_keys(Keys.TAB)
        active = page.driver.switch_to.active_element
        order.append(active.get_attribute("id") or active.text)
    assert order == ["timeout", "cwd", "env", "stdin", "Start"], order
    active.send_keys(Keys.SPACE)
    page.until(lambda: "typed" in page.output_text(), "Space on Start did not open the job")
    assert page.driver.switch_to.active_element.get_attribute("id") == "job-title"


def test_the_page_fits_a_phone_screen(page):
    page.api("POST", "/jobs", {"args": ["sh", "-c", "echo " + "a-long-argument " * 20]})
    driver = page.driver
    size = driver.get_window_size()
    try:
        driver.set_window_size(390, 844)
        page.open()
        page.log_in()
        page.until(lambda: page.shown("#job-rows tr"), "no job listed")
        width = driver.execute_script("return window.innerWidth")
        # Nothing wider than the screen: no sideways scrolling to read the page.
        assert driver.execute_script("return document.documentElement.scrollWidth") <= width
        cells = page.find("#job-rows tr").find_elements(By.CSS_SELECTOR, "td")
        assert all(cell.rect["x"] + cell.rect["width"] <= width for cell in cells)
    finally:
        driver.set_window_size(size["width"], size["height"])


def test_a_program_off_the_allow_list_is_refused_with_the_api_error(page):
    page.open()
    page.log_in()
    page.until(lambda: page.shown("#args")).send_keys('["rm", "-rf", "/tmp/nothing"]')
    page.find("#start-form button[type=submit]").click()
    error = page.until(lambda: page.shown("#start-error"), "no error shown")
    assert error.text.startswith("403 program_not_allowed"), error.text
    assert page.api("GET", "/jobs")["jobs"] == []


def test_a_wrong_token_shows_an_error_not_a_blank_page(page):
    page.open()
    page.log_in("not-the-token")
    error = page.until(lambda: page.shown("#login-error"), "no error for a wrong token")
    assert "401" in error.text and "refused" in error.text
    assert page.shown("#token") is not None  # asked again, and nothing else shown
    assert page.shown("#jobs") is None
    page.log_in()
    page.until(lambda: page.shown("#jobs"), "the right token did not open the page")
    assert page.shown("#login-error") is None


def test_the_token_is_asked_once_and_kept_for_the_tab_only(page):
    page.open()
    page.log_in()
    page.until(lambda: page.shown("#jobs"))
    page.driver.refresh()  # the same tab: not asked again
    page.until(lambda: page.shown("#jobs"), "the tab forgot its token")
    assert page.shown("#token") is None
    stored = page.driver.execute_script(
        "return [localStorage.length, document.cookie, sessionStorage.length]")
    assert stored == [0, "", 1]  # nothing kept beyond the tab
    first = page.driver.current_window_handle
    page.driver.switch_to.new_window("tab")
    try:
        page.open()
        page.until(lambda: page.shown("#token"), "another tab was not asked for the token")
    finally:
        page.driver.close()
        page.driver.switch_to.window(first)


def test_a_job_that_is_not_there_says_so(page):
    page.open(f"#/jobs/{page.url.rsplit(':', 1)[1]}.nosuchjob")
    page.log_in()
    error = page.until(lambda: page.shown("#job-error"), "no error for an unknown job")
    assert error.text.startswith("404 job_not_found"), error.text


def test_output_shows_each_line_as_it_is_printed(page, tmp_path):
    gate = tmp_path / "gate"
    job = page.api("POST", "/jobs", {"args": [
        "sh", "-c", f"echo first line; {wait_for(gate)}; echo second line"]})
    page.open(f"#/jobs/{job['id']}")
    page.log_in()
    page.until(lambda: "first line" in page.output_text(), "the first line did not show")
    # Shown while the command still waits for the gate: live, not at the end.
    assert "second line" not in page.output_text()
    assert page.find("#job-state").text == "running"
    gate.touch()
    page.until(lambda: "second line" in page.output_text(), "the second line did not show")
    page.until(lambda: page.find("#job-state").text == "exited")
    assert page.find("#job-exit").text == "0"
    assert not page.find("#cancel").is_enabled()


def test_cancel_ends_the_job(page):
    job = page.api("POST", "/jobs", {"args": ["sh", "-c", "echo started; exec sleep 60"]})
    page.open(f"#/jobs/{job['id']}")
    page.log_in()
    page.until(lambda: "started" in page.output_text())
    cancel = page.until(lambda: page.find("#cancel").is_enabled() and page.find("#cancel"))
    cancel.click()
    page.until(lambda: page.find("#job-state").text == "cancelled", "not shown cancelled")
    assert page.find("#job-exit").text == "SIGKILL (-9)"
    assert page.api("GET", f"/jobs/{job['id']}")["state"] == "cancelled"


def test_ansi_colours_are_rendered_and_html_is_shown_as_text(page):
    script = (r"printf 'plain \033[31mred\033[0m \033[1mbold\033[0m "
              r"<b>not bold</b><img src=x onerror=alert(1)>\n'; echo oops >&2")
    job = page.api("POST", "/jobs", {"args": ["sh", "-c", script]})
    page.open(f"#/jobs/{job['id']}")
    page.log_in()
    page.until(lambda: page.find("#job-state").text == "exited")
    out = page.find("#output")
    assert "<b>not bold</b><img src=x onerror=alert(1)>" in out.text
    assert out.find_elements(By.CSS_SELECTOR, "b, img") == []  # shown as text, not markup
    assert "\x1b" not in out.text and "[31m" not in out.text
    red = out.find_element(By.XPATH, ".//span[text()='red']")
    plain = out.find_element(By.XPATH, ".//span[starts-with(text(), 'plain')]")
    assert red.value_of_css_property("color") != plain.value_of_css_property("color")
    r, g, b = (int(v) for v in re.findall(r"\d+", red.value_of_css_property("color"))[:3])
    assert r > 2 * max(g, b), (r, g, b)  # red, whatever the exact shade
    bold = out.find_element(By.XPATH, ".//span[text()='bold']")
    assert int(bold.value_of_css_property("font-weight")) >= 700
    # stdout and stderr told apart.
    err = out.find_element(By.XPATH, ".//span[contains(text(), 'oops')]")
    assert "stderr" in err.get_attribute("class").split()
    assert err.value_of_css_property("background-color") != plain.value_of_css_property(
        "background-color")


def test_auto_scroll_follows_the_output_until_the_reader_scrolls_up(page, tmp_path):
    gate = tmp_path / "gate"
    job = page.api("POST", "/jobs", {"args": [
        "sh", "-c", f"seq 1 300; {wait_for(gate)}; seq 301 600"]})
    page.open(f"#/jobs/{job['id']}")
    page.log_in()
    page.until(lambda: "300" in page.output_text())
    driver = page.driver
    out = page.find("#output")
    at_bottom = "return arguments[0].scrollHeight - arguments[0].scrollTop" \
                " - arguments[0].clientHeight < 4"
    page.until(lambda: driver.execute_script(at_bottom, out), "the output did not follow")
    driver.execute_script("arguments[0].scrollTop = 0", out)
    page.until(lambda: page.shown("#follow"), "no way back to following the output")
    gate.touch()
    page.until(lambda: "600" in page.output_text())
    assert driver.execute_script("return arguments[0].scrollTop", out) == 0  # left where read
    page.find("#follow").click()
    assert driver.execute_script(at_bottom, out)


def test_a_queued_job_is_shown_running_once_it_starts(browser, spawn_instance, tmp_path):
    child = spawn_instance("--max-running", "1", env={"TASKRUNNER_TOKEN": TOKEN})
    page = Page(browser, child.url, TOKEN)
    first, second = tmp_path / "first", tmp_path / "second"
    blocker = page.api("POST", "/jobs", {"args": ["sh", "-c", wait_for(first)]})
    job = page.api("POST", "/jobs", {"args": ["sh", "-c", f"echo started; {wait_for(second)}"]})
    assert (blocker["state"], job["state"]) == ("running", "queued")
    page.open(f"#/jobs/{job['id']}")
    page.log_in()
    page.until(lambda: page.find("#job-state").text == "queued", "not shown queued")
    assert page.find("#cancel").is_enabled()  # a queued job can be cancelled too
    first.touch()  # the slot frees, the job starts
    page.until(lambda: page.find("#job-state").text == "running", "not shown running")
    page.until(lambda: "started" in page.output_text())
    second.touch()
    page.until(lambda: page.find("#job-state").text == "exited")
