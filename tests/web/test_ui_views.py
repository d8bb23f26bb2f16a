"""The page as a person works in it all day, in a real Chromium against a real instance:
finding a job (state, search, pages: all in the URL, so back and bookmarks work), a job's
whole story, Re-run, download and copy, per-line times, the usage columns, the chart, dark
mode; axe-core (pinned, vendored in tests/vendor/axe-core by scripts/vendor-axe, injected
here) finds no serious or critical violation on the list, the job and the form, light and
dark; every action works from the keyboard; the screenshots docs/ui.md shows are still
drawn (into a temporary directory; ``TASKRUNNER_UI_SCREENSHOTS=docs/ui`` writes them there).

One Chromium for the module (tests/browser.py); each test has an instance of its own.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import Page, headless_chromium, screenshot_failed
from helpers import REPO, wait_for
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

TOKEN = "ui-views-token"
AXE = Path(REPO) / "tests" / "vendor" / "axe-core" / "axe.min.js"


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        yield driver


@pytest.fixture
def browser(chromium: WebDriver, spawn_instance: Any,
            request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    """The module's Chromium, left as it was found: the system's light scheme, no theme
    chosen, the window's size; a screenshot if the test failed."""
    failed_before = request.session.testsfailed
    yield chromium
    if request.session.testsfailed > failed_before:
        screenshot_failed(chromium, request)
    chromium.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    chromium.get("about:blank")
    chromium.set_window_size(1280, 900)


@pytest.fixture
def page(browser: WebDriver, spawn_instance: Any) -> Page:
    child = spawn_instance("--allow", "sh", "--allow", "echo", "--allow", "sleep",
                           env={"TASKRUNNER_TOKEN": TOKEN})
    return Page(browser, child.url, TOKEN)


def ids(page: Page) -> list[str]:
    return [e.get_attribute("data-id")
            for e in page.driver.find_elements(By.CSS_SELECTOR, "#job-rows tr")]


def finished(page: Page, job: dict[str, Any]) -> dict[str, Any]:
    return page.until(lambda: (j := page.api("GET", f"/jobs/{job['id']}"))["state"] not in (
        "queued", "running") and j, f"job {job['id']} did not end")


def dark(page: Page, on: bool) -> None:
    """The system's colour scheme, as the page's media queries see it."""
    page.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
        {"name": "prefers-color-scheme", "value": "dark" if on else "light"}]})


def background(page: Page) -> tuple[int, ...]:
    color = page.driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    rgb = tuple(int(v) for v in re.findall(r"\d+", color)[:3])
    if rgb == (0, 0, 0) and "rgba" in color:  # transparent body: the root's
        color = page.driver.execute_script(
            "return getComputedStyle(document.documentElement).backgroundColor")
        rgb = tuple(int(v) for v in re.findall(r"\d+", color)[:3])
    return rgb


def test_filter_search_and_pages_live_in_the_url_and_back_returns(page):
    made = [page.api("POST", "/jobs", {"args": args})
            for args in (["echo", "deploy-web"], ["echo", "Deploy_DB"], ["echo", "other"],
                         ["sleep", "60"])]
    page.api("DELETE", f"/jobs/{made[3]['id']}")
    for job in made:
        finished(page, job)
    page.open()
    page.log_in()
    page.until(lambda: len(ids(page)) == 4, "the list does not show the four jobs")
    search = page.find("#filter-q")
    search.send_keys("deploy", Keys.ENTER)
    page.until(lambda: sorted(ids(page)) == sorted([made[0]["id"], made[1]["id"]]),
               "the search did not find both deploy jobs, whatever their case")
    assert "q=deploy" in page.driver.current_url
    Select(page.find("#filter-state")).select_by_visible_text("cancelled")
    page.until(lambda: "state=cancelled" in page.driver.current_url)
    page.until(lambda: page.shown("#jobs-empty") and ids(page) == [], "a match is shown")
    assert page.find("#jobs-empty").text == "No job matches."
    page.driver.back()  # the search alone again, its field filled
    page.until(lambda: len(ids(page)) == 2, "back did not return to the search")
    assert page.find("#filter-state").get_attribute("value") == ""
    assert page.find("#filter-q").get_attribute("value") == "deploy"
    # A bookmark: the filtered view, opened as it is (a new load of the page).
    page.driver.get("about:blank")
    page.open("#/?state=cancelled")
    page.until(lambda: ids(page) == [made[3]["id"]], "the bookmarked filter is not applied")
    assert page.find("#filter-state").get_attribute("value") == "cancelled"
    asked = page.driver.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
        ".filter((n) => n.includes('/jobs?'))")
    assert all("state=cancelled" in name for name in asked), asked  # the server filters


def test_a_job_shows_its_whole_story_times_download_copy_and_re_run(page, tmp_path):
    gate = tmp_path / "gate"
    job = page.api("POST", "/jobs", {
        "args": ["sh", "-c", f'echo "first $A"; {wait_for(gate)}; echo second; cat'],
        "env": {"A": "secret-value"}, "cwd": str(tmp_path), "timeout": 30, "stdin": "piped\n"})
    page.open(f"#/jobs/{job['id']}")
    page.log_in()
    page.until(lambda: "first secret-value" in page.output_text())
    gate.touch()  # "second" is written while the page follows: it comes with its time
    page.until(lambda: page.find("#job-state").text == "exited")
    assert page.output_text() == "first secret-value\nsecond\npiped"
    assert page.find("#job-timeout").text == "30.0 s"
    assert page.find("#job-cwd").text == str(tmp_path)
    assert page.find("#job-env").text == "A"  # the name, never the value
    usage = page.api("GET", f"/jobs/{job['id']}")["usage"]
    if usage is None:  # not measured: nothing shown
        assert page.find("#job-cpu").text == "—" and page.find("#job-memory").text == "—"
    else:
        assert page.find("#job-cpu").text.endswith(" s")
        assert page.find("#job-memory").text.endswith(("B", "KiB", "MiB", "GiB"))
    assert page.find("#job-started").get_attribute("title").endswith(" UTC")
    assert page.find("#job-finished").text and page.find("#job-exit").text == "0"
    # Per-line times, on demand: "second" and "piped" were sent live.
    assert not page.shown("#output .ts")
    page.find("#times").click()
    stamps = page.driver.execute_script(
        "return [...document.querySelectorAll('#output .ts')].map("
        "(e) => getComputedStyle(e, '::before').content)")
    assert stamps and all(re.fullmatch(r'"\d\d:\d\d:\d\d\.\d{3} "', s) for s in stamps), stamps
    assert page.output_text().endswith("second\npiped")  # times are not part of the text
    # Download: a text file of the output.
    page.driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                {"behavior": "allow", "downloadPath": str(tmp_path)})
    page.find("#download").click()
    saved = tmp_path / f"{job['id']}.txt"
    whole = "first secret-value\nsecond\npiped\n"
    page.until(lambda: saved.exists() and saved.read_text() == whole,
               f"the output was not downloaded: {sorted(p.name for p in tmp_path.iterdir())}")
    # Copy: the same text on the clipboard.
    origin = page.url
    page.driver.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    page.find("#copy").click()
    page.until(lambda: page.find("#job-status").text == "Output copied.")
    pasted = page.driver.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], (e) => arguments[0](String(e)))")
    assert pasted == whole
    # Re-run: the form with what the instance kept, asking again for the rest.
    page.find("#rerun").click()
    page.until(lambda: page.shown("#start-form"), "Re-run did not show the form")
    assert page.find("#args").get_attribute("value") == "\n".join(job["args"])
    assert page.find("#timeout").get_attribute("value") == "30"
    assert page.find("#cwd").get_attribute("value") == str(tmp_path)
    assert page.find("#env").get_attribute("value") == "A="
    assert page.find("#stdin").get_attribute("value") == ""
    assert "type the values of A and any standard input again" in page.find("#start-status").text
    env = page.driver.switch_to.active_element
    assert env.get_attribute("id") == "env"  # where the missing value goes
    env.send_keys("again")
    page.find("#start-form button[type=submit]").click()
    page.until(lambda: page.find("#job-id").text not in ("", job["id"]), "no new job opened")
    page.until(lambda: page.output_text() == "first again\nsecond", "the re-run did not run")


def test_usage_columns_show_what_was_measured_and_sort_the_page(page):
    # Three jobs of different CPU: a busy loop of each size.
    jobs = [finished(page, page.api("POST", "/jobs", {"args": [
        "sh", "-c", f"i=0; while [ $i -lt {n} ]; do i=$((i+1)); done"]}))
        for n in (30000, 10, 120000)]
    page.open()
    page.log_in()
    page.until(lambda: len(ids(page)) == 3)
    listed = ids(page)  # newest first
    assert listed == [job["id"] for job in jobs[::-1]]
    cells = [row.find_elements(By.CSS_SELECTOR, "td")[6:]
             for row in page.driver.find_elements(By.CSS_SELECTOR, "#job-rows tr")]
    measured = [job["usage"] for job in jobs[::-1]]
    if all(usage is None for usage in measured):  # nothing measured: a dash, as listed
        assert [[c.text for c in pair] for pair in cells] == [["—", "—"]] * 3
        most_first = least_first = listed
    else:
        cpu = {job["id"]: job["usage"]["cpu_user"] + job["usage"]["cpu_system"] for job in jobs}
        most_first = sorted(listed, key=lambda i: -cpu[i])
        least_first = sorted(listed, key=lambda i: cpu[i])
    heading = page.find('#jobs th[data-sort="cpu"]')
    button = heading.find_element(By.CSS_SELECTOR, "button")
    seen = []
    for _ in range(3):  # from the keyboard: most first, least first, as listed
        button.send_keys(Keys.ENTER)
        seen.append((heading.get_attribute("aria-sort"), ids(page)))
    assert seen == [("descending", most_first), ("ascending", least_first), ("none", listed)]


def test_the_chart_shows_running_commands_and_completions(page, tmp_path):
    gate = tmp_path / "gate"
    page.api("POST", "/jobs", {"args": ["sh", "-c", wait_for(gate)]})
    page.open()
    page.log_in()
    now = page.until(lambda: page.shown("#glance-now"), "no chart")
    page.until(lambda: now.text.startswith("1 running · 0 queued"), "not 1 running")
    gate.touch()
    page.until(lambda: now.text.startswith("0 running"), "the end is not charted")
    lines = page.driver.find_elements(By.CSS_SELECTOR, "#chart-load polyline")
    assert {e.get_attribute("class") for e in lines} == {"line running", "line queued"}
    points = lines[0].get_attribute("points").split()
    assert len(points) >= 2
    assert "running" in page.find("#chart-load").get_attribute("aria-label")


def test_dark_mode_follows_the_system_and_the_toggle_is_remembered(page):
    page.open()
    page.log_in()
    page.until(lambda: page.shown("#jobs"))
    assert sum(background(page)) > 600  # light
    dark(page, True)
    page.until(lambda: sum(background(page)) < 150, "the system's dark scheme is not followed")
    toggle = page.find("#theme")
    assert toggle.get_attribute("aria-pressed") == "true"
    toggle.click()  # light, though the system is dark: remembered
    page.until(lambda: sum(background(page)) > 600)
    assert toggle.get_attribute("aria-pressed") == "false"
    assert page.driver.execute_script("return localStorage.getItem('taskrunner.theme')") == "light"
    page.driver.refresh()
    page.until(lambda: page.shown("#jobs"))
    assert sum(background(page)) > 600, "the choice was forgotten"
    page.find("#theme").click()
    page.until(lambda: sum(background(page)) < 150)
    page.driver.execute_script("localStorage.clear()")


AXE_RUN = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ["violations"]}).then((r) => done(r.violations
  .filter((v) => v.impact === "serious" || v.impact === "critical")
  .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`)),
  (e) => done([`axe failed: ${e}`]));
"""


def axe(page: Page) -> list[str]:
    page.driver.execute_script(AXE.read_text())  # devtools evaluation: the page's CSP allows
    page.driver.set_script_timeout(60)
    found: list[str] = page.driver.execute_async_script(AXE_RUN)
    return found


def test_axe_finds_no_serious_violation_on_the_views_light_and_dark(page, tmp_path):
    gate = tmp_path / "gate"
    job = page.api("POST", "/jobs", {"args": ["sh", "-c", f"echo out; echo err >&2; "
                                              f"{wait_for(gate)}"], "env": {"X": "1"}})
    page.api("POST", "/jobs", {"args": ["sleep", "60"]})
    found = {}
    for theme in ("light", "dark"):
        dark(page, theme == "dark")
        page.open()
        page.driver.execute_script("sessionStorage.clear()")  # asked for the token again
        page.driver.refresh()
        page.until(lambda: page.shown("#token"))
        found[f"{theme} token"] = axe(page)
        page.log_in()
        page.until(lambda: len(ids(page)) == 2 and page.shown("#glance"))
        found[f"{theme} list"] = axe(page)
        page.open(f"#/jobs/{job['id']}")
        page.until(lambda: "err" in page.output_text())
        page.find("#times").click()
        found[f"{theme} job"] = axe(page)
        page.find("#rerun").click()
        page.until(lambda: page.find("#env").get_attribute("value") == "X=")
        page.find("#args").clear()
        page.find("#args").send_keys('["not closed"')
        page.find("#start-form button[type=submit]").click()  # an error shown in the form
        page.until(lambda: page.shown("#start-error"))
        found[f"{theme} form"] = axe(page)
    gate.touch()
    assert found == {name: [] for name in found}


def tab_to(page: Page, matches: Any, limit: int = 60) -> Any:
    """Press Tab until the focused element satisfies ``matches``; it, or fail."""
    for _ in range(limit):
        active = page.driver.switch_to.active_element
        if matches(active):
            return active
        active.send_keys(Keys.TAB)
    pytest.fail("Tab never reached the element")


def test_every_action_works_from_the_keyboard(page, tmp_path):
    gate = tmp_path / "gate"
    job = page.api("POST", "/jobs", {"args": ["sh", "-c", f"echo marker-out; {wait_for(gate)}"]})
    page.api("POST", "/jobs", {"args": ["echo", "not this one"]})
    page.open()
    page.log_in()
    page.until(lambda: len(ids(page)) == 2)
    # The theme toggle, then the search, from the keyboard alone.
    page.driver.find_element(By.TAG_NAME, "body").click()
    toggle = tab_to(page, lambda e: e.get_attribute("id") == "theme")
    toggle.send_keys(Keys.ENTER)
    assert toggle.get_attribute("aria-pressed") == "true"
    toggle.send_keys(Keys.ENTER)
    assert toggle.get_attribute("aria-pressed") == "false"
    tab_to(page, lambda e: e.get_attribute("id") == "filter-q").send_keys("marker", Keys.ENTER)
    page.until(lambda: ids(page) == [job["id"]], "Enter in the search did not search")
    link = tab_to(page, lambda e: e.tag_name == "a" and "/jobs/" in (e.get_attribute("href") or ""))
    link.send_keys(Keys.ENTER)
    page.until(lambda: page.find("#job-id").text == job["id"], "Enter did not open the job")
    page.until(lambda: "marker-out" in page.output_text())
    tab_to(page, lambda e: e.get_attribute("id") == "times").send_keys(Keys.SPACE)
    assert page.find("#times").is_selected()
    page.driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                {"behavior": "allow", "downloadPath": str(tmp_path)})
    page.find("#job-title").click()
    tab_to(page, lambda e: e.get_attribute("id") == "download").send_keys(Keys.ENTER)
    page.until(lambda: (tmp_path / f"{job['id']}.txt").exists(), "Enter did not download")
    page.find("#job-title").click()
    tab_to(page, lambda e: e.get_attribute("id") == "cancel").send_keys(Keys.ENTER)
    page.until(lambda: page.find("#job-state").text == "cancelled", "Enter did not cancel")
    page.find("#job-title").click()
    tab_to(page, lambda e: e.get_attribute("id") == "rerun").send_keys(Keys.ENTER)
    page.until(lambda: page.driver.switch_to.active_element.get_attribute("id") == "args",
               "Re-run did not bring the focus to the form")
    start = tab_to(page, lambda e: e.text == "Start")
    start.send_keys(Keys.ENTER)
    page.until(lambda: page.find("#job-id").text not in ("", job["id"]), "Enter on Start")
    page.until(lambda: "marker-out" in page.output_text())
    gate.touch()


SIZE_CHECK = """
const [data, done] = arguments;
const img = new Image();
img.onload = () => {
  const c = document.createElement("canvas");
  c.width = img.width; c.height = img.height;
  const g = c.getContext("2d");
  g.drawImage(img, 0, 0);
  const px = g.getImageData(0, 0, c.width, c.height).data;
  let sum = 0, colours = new Set();
  for (let i = 0; i < px.length; i += 4 * 97) {
    sum += px[i] + px[i + 1] + px[i + 2];
    colours.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
  }
  done([img.width, img.height, sum / (px.length / (4 * 97)) / 3, colours.size]);
};
img.onerror = () => done(null);
img.src = "data:image/png;base64," + data;
"""


def test_the_screenshots_of_each_view_are_drawn_light_and_dark(page, tmp_path):
    out = Path(os.environ.get("TASKRUNNER_UI_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    for args in (["echo", "deploy done"], ["sh", "-c", "echo building; echo warning >&2"],
                 ["sleep", "60"]):
        page.api("POST", "/jobs", {"args": args, "env": {"STAGE": "prod"}})
    shown = page.api("GET", "/jobs")["jobs"][1]
    page.driver.set_window_size(1100, 800)
    brightness = {}
    for theme in ("light", "dark"):
        dark(page, theme == "dark")
        page.open()
        if theme == "light":
            page.log_in()
        page.until(lambda: len(ids(page)) == 3 and page.shown("#glance"))
        views = {"list": None, "job": f"#/jobs/{shown['id']}", "form": "rerun"}
        for name, where in views.items():
            if where == "rerun":
                page.find("#rerun").click()
                page.until(lambda: page.find("#env").get_attribute("value") == "STAGE=")
            elif where:
                page.open(where)
                page.until(lambda: page.find("#job-state").text == "exited")
            else:  # the table, its search and pages (the chart and the form: "form")
                page.driver.execute_script("document.getElementById('jobs-title').scrollIntoView()")
            data = page.driver.get_screenshot_as_base64()
            (out / f"{name}-{theme}.png").write_bytes(base64.b64decode(data))
            width, height, mean, colours = page.driver.execute_async_script(SIZE_CHECK, data)
            assert (width, height) == tuple(page.driver.execute_script(
                "return [innerWidth * devicePixelRatio, innerHeight * devicePixelRatio]"))
            assert colours > 8, f"{name}-{theme}.png is nearly blank"
            brightness[name, theme] = mean
    for name in ("list", "job", "form"):
        assert brightness[name, "light"] > brightness[name, "dark"] + 60, brightness
    assert json.dumps(sorted(p.name for p in out.glob("*.png"))) == json.dumps(sorted(
        f"{n}-{t}.png" for n in ("list", "job", "form") for t in ("light", "dark")))
