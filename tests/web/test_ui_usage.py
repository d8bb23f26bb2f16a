"""The page shows what a finished job cost, the figures the instance measured: in the job's
view and in the list's columns."""

from __future__ import annotations

import pytest
from helpers import PY
from selenium.webdriver.common.by import By
from test_ui import TOKEN, Page, browser, chromium  # noqa: F401 - the fixtures, shared

MIB = 1 << 20
# About 0.3 s of CPU in 64 MiB touched: figures that can only come from a real measurement.
BUSY = ("import time\nb = b'x' * (64 << 20)\nt = time.process_time()\n"
        "while time.process_time() - t < 0.3:\n    for _ in range(10000): pass")


@pytest.fixture
def page(browser, spawn_instance):  # noqa: F811 - browser is the fixture imported above
    child = spawn_instance("--allow", PY, env={"TASKRUNNER_TOKEN": TOKEN})
    return Page(browser, child.url, TOKEN)


def _seconds(text: str) -> float:
    number, unit = text.split()
    assert unit == "s", text
    return float(number)


def test_a_finished_job_shows_its_cpu_and_peak_memory(page):
    job = page.api("POST", "/jobs", {"args": [PY, "-c", BUSY]})
    page.open(f"#/jobs/{job['id']}")
    page.log_in()
    page.until(lambda: page.find("#job-state").text == "exited", "the job did not end")
    usage = page.api("GET", f"/jobs/{job['id']}")["usage"]
    cpu = usage["cpu_user"] + usage["cpu_system"]
    assert cpu >= 0.28 and usage["max_rss"] >= 64 * MIB, usage
    page.until(lambda: page.find("#job-cpu").text != "—", "the job's CPU is not shown")
    assert _seconds(page.find("#job-cpu").text) == pytest.approx(cpu, abs=0.006)
    shown = page.find("#job-memory").text
    assert shown == f"{usage['max_rss'] / MIB:.0f} MiB", (shown, usage)
    # The list's columns: the same figures in the job's row.
    page.open()
    row = page.until(lambda: page.shown(f'#job-rows tr[data-id="{job["id"]}"]'),
                     "the job is not in the table")
    cells = row.find_elements(By.CSS_SELECTOR, "td")
    page.until(lambda: cells[6].text != "—", "the list shows no CPU")
    assert _seconds(cells[6].text) == pytest.approx(cpu, abs=0.006)
    assert cells[7].text == shown
