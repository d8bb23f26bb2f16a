"""The /ui page with many jobs listed: first paint and the time until the table is built.

Starts ``python -m taskrunner`` from SOURCE (a checkout) with a token and ``--max-jobs``
above N, makes N quick jobs (``true``, four at a time, each polled until it ended), then
loads ``/ui`` ROUNDS times in headless Chromium (Debian's, through /usr/bin/chromedriver)
with the token already in the tab's sessionStorage, as after the reader typed it: cold (the
browser's cache emptied first: the page, its script and style sheet fetched) and warm (a
reload: the page revalidated, 304; its script and style sheet from the cache).

Each load reports the Performance API's ``first-contentful-paint``, the page's own mark
``taskrunner:jobs-rendered`` (the table built from the first ``GET /jobs``, its rows
counted: the newest 50 at most, the page's first page), ``largest-contentful-paint``, and
the ``GET /jobs`` fetch (end and size). Prints one line per load and the medians. Then, in
the loaded page, ROUNDS times each: a search for one job's id (typed and submitted: the
server searches the 1,000 jobs' args, callers and ids) and the next page of older jobs, each
timed from the action to the table drawn again (the page's mark), and the medians.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from bench.instance import REPO, taskrunner

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

MEASURE = """
const done = arguments[arguments.length - 1];
const lcp = [];
new PerformanceObserver((list) => lcp.push(...list.getEntries()))
  .observe({type: "largest-contentful-paint", buffered: true});
setTimeout(() => {
  const fcp = performance.getEntriesByName("first-contentful-paint")[0];
  const mark = performance.getEntriesByName("taskrunner:jobs-rendered")[0];
  // the list's GET /jobs?limit=..., not a job's own URL
  const jobs = performance.getEntriesByType("resource")
    .filter((e) => /\\/jobs(\\?|$)/.test(e.name))[0];
  done({
    fcp: fcp ? fcp.startTime : null,
    rendered: mark ? mark.startTime : null,
    rows: document.querySelectorAll("#job-rows tr").length,
    lcp: lcp.length ? lcp[lcp.length - 1].startTime : null,
    jobs_end: jobs ? jobs.responseEnd : null,
    jobs_bytes: jobs ? jobs.encodedBodySize : null,
  });
}, 100);
"""


def call(conn: http.client.HTTPConnection, method: str, path: str,
         body: Any = None) -> tuple[int, Any]:
    conn.request(method, path, None if body is None else json.dumps(body), AUTH)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def make_jobs(port: int, n: int) -> None:
    def one(_: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        status, job = call(conn, "POST", "/jobs", {"args": ["true"]})
        while status == 429:  # every slot and the queue busy: try again
            time.sleep(0.05)
            status, job = call(conn, "POST", "/jobs", {"args": ["true"]})
        assert status == 202, job
        while job["state"] in ("queued", "running"):
            time.sleep(0.02)
            _, job = call(conn, "GET", f"/jobs/{job['id']}")
        conn.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(n)))


def browser(profile: str) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"),
                            options=options)


PAGE = 50  # the rows the page asks for at first (ui/app.js)


def load(driver: webdriver.Chrome, n: int, reload: bool) -> dict[str, Any]:
    n = min(n, PAGE)
    if reload:
        driver.refresh()
    else:
        driver.execute_cdp_cmd("Network.clearBrowserCache", {})
        driver.get(driver.current_url)
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script("return document.querySelectorAll('#job-rows tr').length")
        >= n)
    result: dict[str, Any] = driver.execute_async_script(MEASURE)
    assert result["rows"] == n, result
    return result


INTERACT = """
const [action, arg, done] = arguments;
const marks = () => performance.getEntriesByName("taskrunner:jobs-rendered");
const before = marks().length;
const t0 = performance.now();
if (action === "search") {
  document.getElementById("filter-q").value = arg;
  document.getElementById("filter").requestSubmit();
} else {
  document.getElementById(action).click();
}
const wait = () => {
  const m = marks();
  if (m.length > before) done([m[m.length - 1].startTime - t0, m[m.length - 1].detail.rows]);
  else setTimeout(wait, 2);
};
wait();
"""


def interact(driver: webdriver.Chrome, action: str, arg: str = "") -> tuple[float, int]:
    """From ``action`` (a search for ``arg``, or a click on the button of that id) to the
    table drawn again: milliseconds, and the rows drawn."""
    driver.set_script_timeout(60)
    ms, rows = driver.execute_async_script(INTERACT, action, arg)
    return float(ms), int(rows)


def main(argv: list[str]) -> int:
    """Make the jobs, load the page ROUNDS times cold and warm; print each and the medians."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment ui_first_paint",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("source", nargs="?", type=Path, default=REPO, metavar="SOURCE",
                    help="the checkout to start")
    ap.add_argument("n", nargs="?", type=int, default=1000, metavar="N", help="jobs")
    ap.add_argument("rounds", nargs="?", type=int, default=7, metavar="ROUNDS")
    ap.add_argument("--state-dir", action="store_true",
                    help="give the instance a SQLite job index (the search is then SQL)")
    args = ap.parse_args(argv)
    n, rounds = args.n, args.rounds
    tmp = Path(tempfile.mkdtemp(prefix="taskrunner-bench-ui-"))
    index = ["--state-dir", str(tmp / "state")] if args.state_dir else []
    instance = taskrunner(["--max-jobs", str(n + 100), *index], tmp / "log", args.source,
                          {"TASKRUNNER_TOKEN": TOKEN})
    port = instance.port
    assert port is not None
    driver = None
    try:
        began = time.monotonic()
        make_jobs(port, n)
        print(f"{n} jobs made in {time.monotonic() - began:.1f} s")
        driver = browser(str(tmp / "profile"))
        url = f"http://127.0.0.1:{port}/ui"
        driver.get(url)
        driver.execute_script(f"sessionStorage.setItem('taskrunner.token', '{TOKEN}')")
        results: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
        for _ in range(rounds):
            for kind in ("cold", "warm"):
                r = load(driver, n, reload=kind == "warm")
                results[kind].append(r)
                print(f"{kind}: FCP {r['fcp']:.0f} ms, GET /jobs done {r['jobs_end']:.0f} ms "
                      f"({r['jobs_bytes']} bytes), table of {r['rows']} rows built at "
                      f"{r['rendered']:.0f} ms (+{r['rendered'] - r['jobs_end']:.0f}), "
                      f"LCP {r['lcp']:.0f} ms")
        for kind, runs in results.items():
            for r in runs:
                r["build"] = r["rendered"] - r["jobs_end"]
            med = {k: statistics.median(r[k] for r in runs)
                   for k in ("fcp", "jobs_end", "rendered", "build", "lcp")}
            print(f"median {kind} of {rounds}: FCP {med['fcp']:.0f} ms, GET /jobs done "
                  f"{med['jobs_end']:.0f} ms, table built {med['rendered']:.0f} ms "
                  f"(building it: {med['build']:.0f} ms), LCP {med['lcp']:.0f} ms")
        wanted = driver.execute_script(
            "return document.querySelector('#job-rows tr:nth-child(25)').dataset.id")
        searches, pages = [], []
        for _ in range(rounds):
            driver.get(url)
            WebDriverWait(driver, 60).until(lambda d: d.execute_script(
                "return document.querySelectorAll('#job-rows tr').length") >= min(n, PAGE))
            ms, rows = interact(driver, "search", wanted)
            assert rows == 1, rows
            searches.append(ms)
            driver.get(url)
            WebDriverWait(driver, 60).until(lambda d: d.execute_script(
                "return document.querySelectorAll('#job-rows tr').length") >= min(n, PAGE))
            ms, rows = interact(driver, "jobs-older")
            assert rows == min(max(n - PAGE, 0), PAGE), rows
            pages.append(ms)
            print(f"search for one id among {n}: {searches[-1]:.0f} ms; older page: "
                  f"{pages[-1]:.0f} ms")
        print(f"median of {rounds}: search {statistics.median(searches):.0f} ms, older page "
              f"{statistics.median(pages):.0f} ms")
    finally:
        if driver is not None:
            driver.quit()
        instance.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0
