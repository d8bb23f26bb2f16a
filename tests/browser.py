"""A headless Chromium for the browser tests: Debian's chromium driven through its own
chromedriver (scripts/install brings both; nothing is downloaded at run time); `Page`, the
web page at /ui in it, and a screenshot of a page when its test failed."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from helpers import serving
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextlib.contextmanager
def headless_chromium(extra_args: Sequence[str] = ()) -> Iterator[WebDriver]:
    """A Chromium in a fresh profile, quit and its profile removed at the end. Missing, it
    skips the test on a developer's machine and fails it under CI (``CI`` set).
    ``extra_args``: more command-line switches (``--host-resolver-rules=...``)."""
    missing = ", ".join(p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK))
    if missing:
        why = f"{missing} not installed (scripts/install installs chromium, chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the browser tests must run: {why}")
        pytest.skip(why)
    profile = tempfile.mkdtemp(prefix="taskrunner-ui-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                f"--user-data-dir={profile}", *extra_args):
        options.add_argument(arg)
    driver: WebDriver | None = None
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER),
                                  options=options)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@contextlib.contextmanager
def page_server(address: str, html: str = "<!doctype html><title>elsewhere</title>"
                ) -> Iterator[str]:
    """A web page of another origin: ``html`` served at ``http://ADDRESS:PORT/`` by a
    small server in a thread (any other loopback address, or another port); yields that
    origin, and stops the server at the end."""
    body = html.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the test's output is for the test

    with serving(Page, address) as url:
        yield url


_ATTACK = """
const [url, body, done] = arguments;
const tries = [
  // The issue's request: a "simple" POST, sent without asking.
  fetch(url, {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body}),
  // A Blob without a type: no Content-Type at all, still simple.
  fetch(url, {method: "POST", mode: "no-cors", body: new Blob([body])}),
  fetch(url, {method: "POST", mode: "no-cors",
              headers: {"Content-Type": "application/x-www-form-urlencoded"}, body}),
  // JSON needs a preflight, which is never granted.
  fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body}),
];
Promise.allSettled(tries).then((r) => done(r.map((x) => x.status)));
"""


def attack_run(driver: WebDriver, page: str, target: str, args: list[str]) -> list[str]:
    """From the page at ``page``, every kind of POST of ``{"args": args}`` a page can send
    to ``target``/run: text/plain, a Blob without a type and a form encoding (no-cors,
    sent without asking), then JSON (which needs a preflight). How each fetch ended:
    "fulfilled" (an opaque answer came) or "rejected"."""
    driver.get(page)
    driver.set_script_timeout(30)
    body = json.dumps({"args": args})
    outcomes: list[str] = driver.execute_async_script(_ATTACK, f"{target}/run", body)
    return outcomes


WAIT = 20.0  # seconds: a deadline for what the page shows, not an expected duration
ARTIFACTS = os.environ.get("TASKRUNNER_TEST_ARTIFACTS",
                           os.path.join(tempfile.gettempdir(), "taskrunner-test-artifacts"))


def api_call(url: str, headers: dict[str, str] | None = None,
             body: Any = None, method: str = "GET") -> tuple[int, Any, bytes]:
    """One request with urllib, outside the browser: status, headers and body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def screenshot_failed(driver: WebDriver, request: pytest.FixtureRequest) -> None:
    """Save the page as a failed test left it (PNG and HTML, under ARTIFACTS); say where."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    name = re.sub(r"[^\w.-]", "_", request.node.name)
    path = os.path.join(ARTIFACTS, f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.png")
    try:
        driver.save_screenshot(path)
        with open(path[:-4] + ".html", "w") as f:
            f.write(driver.page_source)
    except WebDriverException as error:
        path = f"(no screenshot: {error.msg})"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = f"{request.node.nodeid}: screenshot of the failed page: {path}"
    if reporter is not None:
        reporter.write_line(line)
    else:
        print(line)


class Page:
    """The page in the browser, and the instance behind it (its token: ``token``)."""

    def __init__(self, driver: WebDriver, url: str, token: str) -> None:
        self.driver = driver
        self.url = url
        self.token = token

    def until(self, what: Callable[[], Any], message: str = "") -> Any:
        return WebDriverWait(self.driver, WAIT).until(lambda _: what(), message)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def shown(self, css: str) -> WebElement | None:
        found = [e for e in self.driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
        return found[0] if found else None

    def open(self, fragment: str = "") -> None:
        self.driver.get(f"{self.url}/ui{fragment}")

    def log_in(self, token: str | None = None) -> None:
        field = self.until(lambda: self.shown("#token"), "the token is not asked for")
        field.send_keys(self.token if token is None else token)
        self.find("#login-form button[type=submit]").click()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        status, _, data = api_call(self.url + path, {"Authorization": f"Bearer {self.token}"},
                               body, method)
        assert status in (200, 202), data
        return json.loads(data)

    def output_text(self) -> str:
        return str(self.find("#output").text)
