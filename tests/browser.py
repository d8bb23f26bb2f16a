"""A headless Chromium for the browser tests: Debian's chromium driven through its own
chromedriver (scripts/install brings both; nothing is downloaded at run time)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence

import pytest
from helpers import serving
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

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
