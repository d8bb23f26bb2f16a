import json

import pytest
from openapi_check import DOC_PATH, checker
from tornado.httputil import HTTPHeaders

JSON = HTTPHeaders({"Content-Type": "application/json"})


def load_doc():
    with open(DOC_PATH) as f:
        return json.load(f)


@pytest.mark.gen_test
async def test_openapi_json_is_served(instance):
    response = await instance.request("GET", "/openapi.json")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/json"
    doc = json.loads(response.body)
    assert doc == load_doc()
    assert doc["openapi"].startswith("3.")


@pytest.mark.gen_test
async def test_every_route_is_documented_and_every_documented_path_is_routed(instance):
    app = instance.server.http.request_callback
    routed = {rule.matcher._path.replace("%s", "{id}") for rule in app.wildcard_router.rules
              if hasattr(rule.matcher, "_path") and rule.matcher._path is not None}
    assert routed == set(load_doc()["paths"])


def test_every_documented_error_uses_the_error_shape():
    for path, item in load_doc()["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for code, response in operation["responses"].items():
                if int(code) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, code)


@pytest.mark.gen_test
async def test_walk_every_operation_with_bad_input(instance):
    # Every answer is checked against the document by instance.request.
    for path, item in load_doc()["paths"].items():
        for method in item:
            if method == "parameters":
                continue
            url = path.replace("{id}", f"{instance.port}.nosuchjob")
            response = await instance.request(method.upper(), url, raw=b"{" if method == "post"
                                              else None)
            if "{id}" in path:
                assert response.code == 404
            elif method == "post":
                assert response.code == 400
            else:
                assert response.code == 200


def test_the_checker_rejects_what_the_document_does_not_promise():
    check = checker().check
    health = {"status": "ok", "port": 1, "pid": 1, "running": 0, "version": "x", "instance": "1"}
    check("GET", "/healthz", 200, JSON, json.dumps(health).encode())
    bad = [
        ("GET", "/healthz", 500, JSON, json.dumps(health)),  # status not documented
        ("GET", "/healthz", 200, JSON, json.dumps({**health, "port": "1"})),  # wrong type
        ("GET", "/healthz", 200, HTTPHeaders({"Content-Type": "text/html"}), "<p>"),
        ("GET", "/nowhere", 200, JSON, "{}"),  # undocumented path must be a 404
        ("GET", "/jobs/x", 404, JSON, json.dumps({"error": "x"})),  # no message
        ("GET", "/jobs", 200, JSON, json.dumps({"jobs": [{"id": "x"}]})),
        ("GET", "/jobs/x/output", 200, HTTPHeaders({"Content-Type": "application/x-ndjson"}),
         '{"stream": "stdout", "data": "x"}\n'),  # X-Accel-Buffering missing
        ("GET", "/jobs/x/output", 200,
         HTTPHeaders({"Content-Type": "application/x-ndjson", "X-Accel-Buffering": "no"}),
         '{"stream": "stdin", "data": "x"}\n'),
    ]
    for method, path, code, headers, body in bad:
        with pytest.raises(AssertionError):
            check(method, path, code, headers, body.encode())


def test_the_document_is_valid_openapi_3_1():
    # schemathesis checks a document against the OpenAPI 3.1 meta-schema it ships.
    import schemathesis

    from taskrunner.web import openapi

    schemathesis.openapi.from_dict(openapi.document(5)).validate()
    broken = load_doc()
    broken["paths"]["/jobs"]["post"]["responses"]["202"]["links"]["GetJob"]["bogus"] = 1
    with pytest.raises(Exception, match="bogus"):
        schemathesis.openapi.from_dict(broken).validate()


def operations(doc):
    """{operationId: (path item, operation)} of every operation in ``doc``."""
    found = {}
    for item in doc["paths"].values():
        for method, operation in item.items():
            if method != "parameters":
                assert operation["operationId"] not in found, operation["operationId"]
                found[operation["operationId"]] = (item, operation)
    return found


def test_every_link_names_an_operation_and_its_parameters():
    doc = load_doc()
    by_id = operations(doc)
    schemas = doc["components"]["schemas"]
    links = 0
    for item in doc["paths"].values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for response in operation["responses"].values():
                for name, link in response.get("links", {}).items():
                    links += 1
                    assert link["operationId"] in by_id, name
                    target_item, target = by_id[link["operationId"]]
                    accepted = {p["name"] for p in (target_item.get("parameters", [])
                                                    + target.get("parameters", []))}
                    assert link["parameters"], name
                    for parameter, expression in link["parameters"].items():
                        assert parameter in accepted, (name, parameter)
                        # The value comes from a field the response always has.
                        prefix = "$response.body#/"
                        assert expression.startswith(prefix), (name, expression)
                        field = expression[len(prefix):]
                        ref = response["content"]["application/json"]["schema"]["$ref"]
                        assert field in schemas[ref.rsplit("/", 1)[1]]["required"], name
    assert links


def test_a_new_job_links_to_polling_cancelling_and_following_it():
    created = load_doc()["paths"]["/jobs"]["post"]["responses"]["202"]["links"]
    assert {link["operationId"] for link in created.values()} == {
        "getJob", "cancelJob", "getJobOutput"}
    assert all(link["parameters"] == {"id": "$response.body#/id"} for link in created.values())


def test_the_callback_url_pattern_is_the_one_the_validation_applies():
    from taskrunner.web.validation import MAX_URL_LENGTH, URL_PATTERN

    field = load_doc()["components"]["schemas"]["JobRequest"]["properties"]["callback_url"]
    assert field["pattern"] == f"^{URL_PATTERN}$"
    assert field["maxLength"] == MAX_URL_LENGTH


def test_the_documented_cursor_and_page_size_are_the_ones_the_code_checks():
    from taskrunner.jobs.index import CURSOR_PATTERN, DEFAULT_PAGE, MAX_PAGE
    from taskrunner.web.openapi import document

    listing = document(60)["paths"]["/jobs"]["get"]
    parameters = {p["name"]: p["schema"] for p in listing["parameters"]}
    assert parameters["before"]["pattern"] == CURSOR_PATTERN
    limit = parameters["limit"]
    assert (limit["default"], limit["maximum"]) == (DEFAULT_PAGE, MAX_PAGE)
