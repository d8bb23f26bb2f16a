"""``GET /jobs?q=``: finding a job by a piece of its command, its caller or its id, the
same way in SQLite, in PostgreSQL (each test runs on both, real child instances and a real
server) and in an instance's memory without an index: the args as one line (joined by
spaces), the caller, the id. LIKE's own characters (``%``, ``_``,
``\\``) and JSON's (a quote) are searched for as text, never as patterns.
"""

import json
from urllib.parse import quote

import pytest
from helpers import submit, token_sha256, until, wait_done

COMMANDS = [
    ["echo", "deploy-web 50% done"],
    ["echo", "Deploy_DB"],
    ["echo", 'say "hi"', "back\\slash"],
    ["echo", "caf\u00e9"],
    ["echo", "plain"],
]


async def found(instance, q, extra=""):
    response = await instance.request("GET", f"/jobs?q={quote(q)}{extra}")
    assert response.code == 200, response.body
    return json.loads(response.body)


async def args_found(instance, q):
    return sorted(job["args"][1] for job in (await found(instance, q))["jobs"])


async def check_search(instance, other=None):
    jobs = [await submit(instance, {"args": args}) for args in COMMANDS]
    for job in jobs:
        await wait_done(instance, job["id"])
    reader = other or instance

    async def all_listed():
        return len((await found(reader, ""))["jobs"]) == len(COMMANDS)

    await until(all_listed, 10)
    assert await args_found(reader, "deploy") == ["Deploy_DB", "deploy-web 50% done"]  # any case
    assert await args_found(reader, "50%") == ["deploy-web 50% done"]
    assert await args_found(reader, "%") == ["deploy-web 50% done"]  # not "anything"
    assert await args_found(reader, "y_d") == ["Deploy_DB"]  # _ is not "any one character"
    assert await args_found(reader, "y-d") == []
    assert await args_found(reader, 'say "hi"') == ['say "hi"']  # a quote, stored as \" in JSON
    assert (await found(reader, "back\\slash"))["jobs"][0]["id"] == jobs[2]["id"]
    assert await args_found(reader, "\\") == ['say "hi"']  # the backslash of its third arg
    assert await args_found(reader, "caf\u00e9") == ["caf\u00e9"]
    assert await args_found(reader, "nothing like it") == []
    # The args as one line, joined by spaces; a quote inside an arg never joins.
    assert await args_found(reader, "echo plain") == ["plain"]
    assert await args_found(reader, 'hi" back') == ['say "hi"']
    assert await args_found(reader, 'hi", "back') == []
    # The id, and paging through the matches with the cursor, newest first.
    assert await args_found(reader, jobs[4]["id"]) == ["plain"]
    first = await found(reader, "echo", "&limit=2")
    assert [job["id"] for job in first["jobs"]] == [jobs[4]["id"], jobs[3]["id"]]
    rest = await found(reader, "echo", f"&limit=10&before={quote(first['next'])}")
    assert [job["id"] for job in rest["jobs"]] == [job["id"] for job in jobs[2::-1]]
    assert rest["next"] is None
    # With a state filter too.
    assert (await found(reader, "deploy", "&state=running"))["jobs"] == []


@pytest.mark.gen_test(timeout=60)
async def test_search_finds_args_and_ids_in_a_shared_index(spawn_instance, shared_index):
    a = spawn_instance("--instance", "a", *shared_index)
    b = spawn_instance("--instance", "b", *shared_index)
    await check_search(a, other=b)  # b reads a's jobs from the index


@pytest.mark.gen_test(timeout=60)
async def test_search_finds_the_same_jobs_without_an_index(spawn_instance):
    await check_search(spawn_instance())


@pytest.mark.gen_test(timeout=60)
async def test_search_finds_the_caller_and_only_its_own_jobs(spawn_instance, tmp_path,
                                                            shared_index):
    callers = tmp_path / "callers.toml"
    bounds = 'allow = "instance"\nmax_running = "instance"\nlimits = "instance"\n'
    callers.write_text(
        'realm = "search"\n'
        f'[callers.alice_ops]\ntoken_sha256 = "{token_sha256("alice-token")}"\n'
        f'scopes = ["run", "jobs"]\n{bounds}'
        f'[callers.root]\ntoken_sha256 = "{token_sha256("root-token")}"\n'
        f'scopes = ["admin"]\n{bounds}')
    child = spawn_instance("--callers", str(callers), *shared_index)
    alice = {"Authorization": "Bearer alice-token"}
    root = {"Authorization": "Bearer root-token"}
    for headers in (alice, root):
        response = await child.request("POST", "/jobs", {"args": ["echo", "x"]},
                                       headers=headers)
        assert response.code == 202, response.body

    async def by(q, headers):
        response = await child.request("GET", f"/jobs?q={quote(q)}", headers=headers)
        assert response.code == 200, response.body
        return [job["caller"] for job in json.loads(response.body)["jobs"]]

    assert await by("ALICE_", root) == ["alice_ops"]
    assert await by("root", root) == ["root"]
    assert await by("root", alice) == []  # another caller's jobs stay unseen
    assert await by("ops", alice) == ["alice_ops"]


@pytest.mark.gen_test(timeout=30)
async def test_a_search_too_long_is_a_400_and_any_other_is_text(spawn_instance, shared_index):
    child = spawn_instance(*shared_index)
    response = await child.request("GET", "/jobs?q=" + "a" * 201)
    assert response.code == 400, response.body
    assert json.loads(response.body)["error"] == "invalid_field"
    # Anything else is searched for as text (Tornado drops control characters such as NUL
    # from query arguments, so PostgreSQL never sees one).
    for q in ("%25%5C%27%22", "%E2%82%AC", "%0A%09", "%5Cu0000", "a%00b", "%F0%9F%98%80"):
        response = await child.request("GET", "/jobs?q=" + q)
        assert response.code == 200, (q, response.body)

