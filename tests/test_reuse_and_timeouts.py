"""Instance reuse, limits and timeouts with real guests over real HTTP."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

pytestmark = pytest.mark.asyncio

TIMEOUT = 0.5


async def count(client) -> int:
    resp = await client.get("/count")
    assert resp.status == 200
    return int(await resp.text())


async def test_reuse_limit_replaces_the_instance(serve, guest) -> None:
    client = await serve(guest("misbehave"), max_instance_reuse_count=3, max_instances=1)
    counts = [await count(client) for _ in range(7)]
    assert counts == [1, 2, 3, 1, 2, 3, 1]


async def test_idle_instance_expires(serve, guest) -> None:
    client = await serve(guest("misbehave"), idle_instance_timeout="150ms", max_instances=1)
    assert [await count(client), await count(client)] == [1, 2]
    await asyncio.sleep(0.6)
    assert await count(client) == 1


async def test_spinning_guest_is_stopped_between_1x_and_2x_while_others_succeed(serve, guest) -> None:
    client = await serve(guest("misbehave"), request_timeout=f"{int(TIMEOUT * 1000)}ms")
    # A warm instance first: the spinner reuses it, so on an InlineLoop it starts
    # on the loop's thread and must hand the loop over once it runs long.
    assert (await client.get("/")).status == 200
    started = time.monotonic()
    spin = asyncio.ensure_future(client.get("/spin"))
    # Healthy requests keep being served while the spinning one burns its instance.
    for _ in range(5):
        ok = await client.get("/")
        assert ok.status == 200 and await ok.text() == "ok\n"
    assert not spin.done()
    resp = await spin
    elapsed = time.monotonic() - started
    assert resp.status == 504
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT * 2 + 0.5, elapsed
    assert (await client.get("/")).status == 200


async def test_guest_blocked_in_poll_is_stopped(serve, guest) -> None:
    client = await serve(guest("misbehave"), request_timeout=f"{int(TIMEOUT * 1000)}ms")
    started = time.monotonic()
    resp = await client.get("/sleep?ms=60000")
    elapsed = time.monotonic() - started
    assert resp.status == 504
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT * 2 + 0.5, elapsed
    assert (await client.get("/sleep?ms=10")).status == 200


async def test_guest_waiting_for_the_request_body_is_stopped(serve, guest) -> None:
    client = await serve(guest("echo"), request_timeout=f"{int(TIMEOUT * 1000)}ms")
    never_done = asyncio.Event()

    async def stalled_upload():
        yield b"first part\n"
        await never_done.wait()

    started = time.monotonic()
    upload = asyncio.ensure_future(client.post("/", data=stalled_upload()))
    resp = await asyncio.wait_for(upload, 10)
    # The guest already sent its head (it echoes as it reads), so the body is cut off.
    if resp.status == 200:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    else:
        assert resp.status == 504
    assert time.monotonic() - started <= TIMEOUT * 2 + 1.0
    never_done.set()


async def test_trapped_instance_is_never_reused(serve, guest) -> None:
    client = await serve(guest("misbehave"), max_instances=1)
    assert [await count(client), await count(client)] == [1, 2]
    assert (await client.get("/trap")).status == 500
    assert await count(client) == 1  # a fresh instance


async def test_timed_out_instance_is_never_reused(serve, guest) -> None:
    client = await serve(guest("misbehave"), max_instances=1, request_timeout="300ms")
    assert await count(client) == 1
    assert (await client.get("/spin")).status == 504
    assert await count(client) == 1


async def test_max_instances_queues_requests(serve, guest) -> None:
    client = await serve(guest("misbehave"), max_instances=1)
    started = time.monotonic()
    replies = await asyncio.gather(*(client.get("/sleep?ms=150") for _ in range(3)))
    assert all(r.status == 200 for r in replies)
    # One instance serves them one after another.
    assert time.monotonic() - started >= 0.45
    assert await count(client) == 1


async def test_concurrent_requests_use_several_instances(serve, guest) -> None:
    client = await serve(guest("misbehave"))
    started = time.monotonic()
    replies = await asyncio.gather(*(client.get("/sleep?ms=300") for _ in range(4)))
    assert all(r.status == 200 for r in replies)
    assert time.monotonic() - started < 1.0  # in parallel, not 4 x 300 ms


async def test_max_concurrent_requests_makes_requests_wait(serve, guest) -> None:
    client = await serve(guest("misbehave"), max_concurrent_requests=1)
    started = time.monotonic()
    replies = await asyncio.gather(*(client.get("/sleep?ms=150") for _ in range(3)))
    assert all(r.status == 200 for r in replies)
    assert time.monotonic() - started >= 0.45  # one at a time


async def test_blocked_requests_do_not_hold_execution_slots(serve, guest) -> None:
    # One execution slot: requests sleeping in poll give it up, so they overlap.
    client = await serve(guest("misbehave"), max_executing_requests=1)
    started = time.monotonic()
    replies = await asyncio.gather(*(client.get("/sleep?ms=300") for _ in range(3)))
    assert all(r.status == 200 for r in replies)
    assert time.monotonic() - started < 0.85


async def test_guest_profile_written_once_per_instance(serve, guest, tmp_path) -> None:
    import json

    client = await serve(guest("misbehave"), profile=f"guest,{tmp_path}", max_instances=1,
                         max_instance_reuse_count=2)
    for _ in range(3):
        assert (await client.get("/count")).status == 200
    await client.close()  # app cleanup: the last instance exits and writes its profile
    files = sorted(tmp_path.glob("wasmhost-*-instance-*.json"))
    assert len(files) == 2  # two instances: reuse count 2, three requests
    requests = []
    for path in files:
        events = json.loads(path.read_text())["traceEvents"]
        names = [e["name"] for e in events]
        assert names.count("instantiate") == 1
        for event in events:
            if event.get("cat") == "request":
                requests.append(event)
                assert event["args"]["wasm_us"] >= 0
                assert any("response-outparam.set" in name for name in event["args"]["host_us"])
        host_calls = [e for e in events if e.get("cat") == "host"]
        assert host_calls and all(e["dur"] >= 0 for e in host_calls)
    assert sorted(e["name"] for e in requests) == ["request 0", "request 1", "request 2"]


async def test_concurrent_reuse_above_one_is_ignored_for_wasi_0_2(serve, guest) -> None:
    # Two overlapping requests must never enter one 0.2 instance at once.
    client = await serve(guest("misbehave"), max_instance_concurrent_reuse_count=4, max_instances=1)
    started = time.monotonic()
    replies = await asyncio.gather(*(client.get("/sleep?ms=200") for _ in range(2)))
    assert all(r.status == 200 for r in replies)
    assert time.monotonic() - started >= 0.4


async def test_timeout_while_waiting_for_an_execution_slot(serve, guest) -> None:
    # One slot held by a spinning guest: the queued request times out too, and
    # the slot accounting stays right for the requests after them.
    client = await serve(guest("misbehave"), max_executing_requests=1, request_timeout="400ms")
    spin = asyncio.ensure_future(client.get("/spin"))
    await asyncio.sleep(0.1)
    waiting = await client.get("/count")
    assert waiting.status in (200, 504)
    assert (await spin).status == 504
    for _ in range(3):
        assert (await client.get("/")).status == 200


async def test_a_long_request_does_not_hold_the_others_back(serve, guest) -> None:
    # One executing slot, taken by a guest spinning until its timeout: after
    # the busy slice (0.1 s) it gives the slot up and a healthy request gets a
    # fresh instance instead of waiting for the spinner's 2 s timeout.
    client = await serve(guest("misbehave"), max_executing_requests=1, request_timeout="2s")
    spin = asyncio.ensure_future(client.get("/spin"))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    ok = await client.get("/")
    assert ok.status == 200 and await ok.text() == "ok\n"
    assert time.monotonic() - started < 1.0
    assert not spin.done()
    assert (await spin).status == 504
