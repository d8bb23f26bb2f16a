"""The page's files (web/page.py) over plain HTTP: served without the token, with their
caching headers. Every answer is also checked against the OpenAPI document (ETag and
Cache-Control are required there). The page in a browser: tests/web/test_ui.py."""

from __future__ import annotations

import json
import re

import pytest

TOKEN = "page-test-token"


@pytest.mark.gen_test(timeout=30)
async def test_the_page_and_its_files_are_served_with_caching_headers_and_no_token(
        spawn_instance):
    child = spawn_instance(env={"TASKRUNNER_TOKEN": TOKEN})
    response = await child.request("GET", "/ui")
    assert response.code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"  # revalidated: upgrades show at once
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    page = response.body
    revalidated = await child.request("GET", "/ui",
                                      headers={"If-None-Match": response.headers["ETag"]})
    assert (revalidated.code, revalidated.body) == (304, b"")
    # The page names its files with their version; asked for so, they are cached a year.
    refs = dict(re.findall(rb'(?:src|href)="ui/([\w.-]+)\?v=(\w+)"', page))
    assert set(refs) == {b"app.js", b"ansi.js", b"core.js", b"chart.js", b"form.js",
                         b"actions.js", b"list.js", b"job.js", b"theme.js", b"ui.css"}, refs
    for name, version in refs.items():
        path = f"/ui/{name.decode()}"
        response = await child.request("GET", f"{path}?v={version.decode()}")
        assert response.code == 200 and response.body
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert response.headers["Content-Type"].startswith(
            "text/javascript" if name.endswith(b".js") else "text/css")
        assert response.headers["ETag"] == f'"{version.decode()}"'
        response = await child.request("GET", path)  # without the version: revalidated
        assert (response.code, response.headers["Cache-Control"]) == (200, "no-cache")
        revalidated = await child.request("GET", path,
                                          headers={"If-None-Match": response.headers["ETag"]})
        assert revalidated.code == 304
    # Only the page is public: its unknown files are a JSON 404, the API still wants the token.
    response = await child.request("GET", "/ui/nothing.js")
    assert (response.code, json.loads(response.body)["error"]) == (404, "not_found")
    assert (await child.request("GET", "/ui/index.html")).code == 404  # the page is /ui only
    assert (await child.request("GET", "/jobs")).code == 401
