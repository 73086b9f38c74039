"""Loop wake-ups from worker threads: batching, holding between jobs, and the lane hook."""
from __future__ import annotations

import asyncio
import threading
import time

from wasmhost.handler_runtime import ThreadRuntime
from wasmhost.wasi import wakeups
from wasmhost.wasi.wakeups import WakeBatch, call_soon_threadsafe, deferred_wakeups, release_held_wakeups


async def _settle_loop() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_batched_wakeups_arrive_together_at_the_end_of_the_block() -> None:
    loop = asyncio.get_running_loop()
    batch = WakeBatch(loop)
    seen: list[int] = []

    def worker() -> None:
        with deferred_wakeups(batch):
            call_soon_threadsafe(loop, seen.append, 1)
            call_soon_threadsafe(loop, seen.append, 2)
            time.sleep(0.05)
            assert seen == []  # nothing delivered inside the block

    await asyncio.to_thread(worker)
    await _settle_loop()
    assert seen == [1, 2]


async def test_held_wakeups_wait_for_release_between_jobs() -> None:
    loop = asyncio.get_running_loop()
    batch = WakeBatch(loop)
    seen: list[str] = []

    def worker() -> list[list[str]]:
        snapshots = []
        with deferred_wakeups(batch, hold=True):
            call_soon_threadsafe(loop, seen.append, "first")
        release_held_wakeups(more_work_queued=True)  # young and more work: still held
        time.sleep(0.05)
        snapshots.append(list(seen))
        with deferred_wakeups(batch, hold=True):
            call_soon_threadsafe(loop, seen.append, "second")
        release_held_wakeups(more_work_queued=False)  # out of work: delivered
        time.sleep(0.05)
        snapshots.append(list(seen))
        return snapshots

    snapshots = await asyncio.to_thread(worker)
    assert snapshots == [[], ["first", "second"]]


async def test_held_wakeups_are_released_once_older_than_the_limit() -> None:
    loop = asyncio.get_running_loop()
    batch = WakeBatch(loop)
    seen: list[int] = []

    def worker() -> bool:
        with deferred_wakeups(batch, hold=True):
            call_soon_threadsafe(loop, seen.append, 1)
        time.sleep(wakeups.HOLD_LIMIT * 5)
        release_held_wakeups(more_work_queued=True)
        return batch.age() == 0.0

    assert await asyncio.to_thread(worker)  # flushed despite more work
    await _settle_loop()
    assert seen == [1]


async def test_a_thread_holding_another_batch_delivers_it_first() -> None:
    loop = asyncio.get_running_loop()
    first, second = WakeBatch(loop), WakeBatch(loop)
    seen: list[str] = []

    def worker() -> None:
        with deferred_wakeups(first, hold=True):
            call_soon_threadsafe(loop, seen.append, "a")
        with deferred_wakeups(second, hold=True):  # a job for another store
            call_soon_threadsafe(loop, seen.append, "b")
        time.sleep(0.05)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    await _settle_loop()
    assert seen == ["a"]
    release_held_wakeups()  # this thread holds nothing: the worker's batch stays held
    assert second.age() > 0
    second.flush()
    await _settle_loop()
    assert seen == ["a", "b"]


def test_lane_hook_runs_after_each_job_with_whether_more_is_queued() -> None:
    calls: list[bool] = []
    done = threading.Event()
    gate = threading.Event()
    runtime = ThreadRuntime(between_jobs=calls.append)
    lane = runtime.new_lane("test-lane")
    lane.submit(gate.wait)           # holds the lane while the next two are queued
    lane.submit(lambda: None)
    lane.submit(done.set)
    gate.set()
    assert done.wait(5)
    lane.release()                   # released lanes run the hook (nothing queued) before parking
    deadline = time.monotonic() + 5
    while len(calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    runtime.shutdown()
    assert calls == [True, True, False, False]


async def test_on_the_loop_thread_callbacks_run_at_once_elsewhere_they_are_scheduled() -> None:
    loop = asyncio.get_running_loop()
    ran_on: dict[str, int] = {}

    def record(label: str) -> None:
        ran_on[label] = threading.get_ident()

    call_soon_threadsafe(loop, record, "from the loop thread")
    assert ran_on == {"from the loop thread": threading.get_ident()}  # at once, no self-pipe round trip

    def worker() -> None:
        call_soon_threadsafe(loop, record, "from a worker")
        assert "from a worker" not in ran_on or ran_on["from a worker"] != threading.get_ident()

    await asyncio.to_thread(worker)
    await _settle_loop()
    assert ran_on["from a worker"] == threading.get_ident()  # the loop ran it
