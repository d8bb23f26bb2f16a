"""After a large output the instance gives its freed heap back (malloc_trim), once per burst."""

import asyncio

import pytest

from taskrunner.memory import LARGE_OUTPUT


@pytest.mark.gen_test(timeout=30)
async def test_a_large_output_is_followed_by_one_trim_and_a_small_one_by_none(instance):
    trimmer = instance.server.trimmer
    if not trimmer.available:
        pytest.skip("this C library has no malloc_trim")
    trimmer.delay = 0.5
    code, body = await instance.run({"args": ["echo", "small"]})
    assert code == 200 and body["stdout"] == "small\n"
    await asyncio.sleep(0.7)
    assert trimmer.trims == 0

    big = ["head", "-c", str(LARGE_OUTPUT), "/dev/zero"]
    results = await asyncio.gather(*(instance.run({"args": big}) for _ in range(4)))
    assert all(code == 200 and len(body["stdout"]) == LARGE_OUTPUT for code, body in results)
    await asyncio.sleep(1.0)
    assert trimmer.trims == 1  # four large outputs in a burst: one trim
