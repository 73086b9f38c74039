"""WASI interfaces beyond wasi:http, exercised by a real componentize-py guest (guests/wasi)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.asyncio


async def test_random_is_random(serve, guest) -> None:
    client = await serve(guest("wasi"))
    first = await (await client.get("/random")).json()
    second = await (await client.get("/random")).json()
    values = first["urandom"] + second["urandom"]
    assert len(set(values)) == 4 and all(len(v) == 32 for v in values)
    assert 0 <= first["random"] < 1


async def test_clocks_advance(serve, guest) -> None:
    import time

    client = await serve(guest("wasi"))
    seen = await (await client.get("/clocks")).json()
    wall, mono = seen["wall"], seen["monotonic"]
    assert abs(wall[0] - time.time()) < 5
    assert 0.015 <= mono[1] - mono[0] < 1.0  # the guest slept 20 ms through a monotonic pollable
    assert wall[1] >= wall[0]


async def test_environment_is_only_what_was_passed(serve, guest) -> None:
    client = await serve(guest("wasi"), env=["FOO=bar", "EMPTY="])
    seen = await (await client.get("/env")).json()
    assert seen["environ"] == {"FOO": "bar", "EMPTY": ""}
    assert seen["argv"] == ["wasmhost"]


async def test_no_files_are_visible(serve, guest) -> None:
    client = await serve(guest("wasi"))
    seen = await (await client.get("/files")).json()
    assert seen["listdir"]["error"] == "FileNotFoundError"
    assert seen["open"]["error"] == "FileNotFoundError"


async def test_exit_ends_the_request_and_the_instance(serve, guest) -> None:
    client = await serve(guest("wasi"), max_instances=1)
    assert (await client.get("/exit")).status == 500
    assert (await client.get("/random")).status == 200
