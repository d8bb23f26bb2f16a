"""A headless Chromium for the browser tests: Debian's chromium driven through its own
chromedriver (scripts/install brings both; nothing is downloaded at run time)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextlib.contextmanager
def headless_chromium() -> Iterator[WebDriver]:
    """A Chromium in a fresh profile, quit and its profile removed at the end. Missing, it
    skips the test on a developer's machine and fails it under CI (``CI`` set)."""
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
                f"--user-data-dir={profile}"):
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
