"""InlineLoop: jobs run on the thread driving the loop, which hands the loop over before blocking."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import pytest

from wasmhost.handler_runtime import InlineLane, ThreadRuntime
from wasmhost.inline_loop import InlineLoop
from wasmhost.server import RUNTIME_KEY
from wasmhost.wasi.wakeups import leave_loop


@pytest.fixture
def loop() -> Any:
    loop = InlineLoop(idle_thread_timeout=5)
    yield loop
    loop.close()


def test_jobs_run_on_the_driving_thread_not_the_caller_of_run_forever(loop: InlineLoop) -> None:
    seen: list[tuple[int, bool, asyncio.AbstractEventLoop]] = []

    async def main() -> None:
        done = loop.create_future()

        def job() -> None:
            seen.append((threading.get_ident(), loop.is_driving(), asyncio.get_running_loop()))
            done.set_result(None)

        loop.run_job(job)
        await done

    loop.run_until_complete(main())
    ((ident, driving, running),) = seen
    assert ident != threading.get_ident()  # the home thread only waits
    assert driving and running is loop


def test_a_job_that_blocks_hands_the_loop_over(loop: InlineLoop) -> None:
    """The job waits for something only a loop callback does: without the hand-over, a deadlock."""
    outcome: dict[str, Any] = {}

    async def main() -> None:
        event = threading.Event()
        finished = loop.create_future()

        def job() -> None:
            outcome["before"] = threading.get_ident()
            leave_loop()
            outcome["driving_after_leave"] = loop.is_driving()
            outcome["set"] = event.wait(10)
            loop.call_soon_threadsafe(finished.set_result, None)

        loop.run_job(job)
        loop.call_later(0.05, event.set)
        await finished
        outcome["loop_thread_at_end"] = threading.get_ident()

    loop.run_until_complete(asyncio.wait_for(main(), 20))
    assert outcome["set"], "the loop did not run while the job waited"
    assert outcome["driving_after_leave"] is False
    assert outcome["loop_thread_at_end"] != outcome["before"]  # another thread drove meanwhile


def test_system_exit_from_a_callback_reaches_the_caller_of_run_forever(loop: InlineLoop) -> None:
    """As on the standard loop (e.g. aiohttp's GracefulExit, a SystemExit, from its signal handler)."""

    def boom() -> None:
        raise SystemExit(3)

    loop.call_soon(boom)
    with pytest.raises(SystemExit):
        loop.run_forever()
    # The loop can run again afterwards, as a standard one can.
    assert loop.run_until_complete(asyncio.sleep(0, result=7)) == 7


def test_keyboard_interrupt_on_the_waiting_thread_stops_the_drivers(loop: InlineLoop) -> None:
    """Ctrl-C without loop signal handlers: run_forever raises, and no driver runs on behind it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, raising KeyboardInterrupt
    try:
        _interrupt_a_running_loop(loop)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_a_running_loop(loop: InlineLoop) -> None:
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(time.monotonic())
        loop.call_later(0.01, tick)

    loop.call_soon(tick)
    loop.call_later(0.1, os.kill, os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()
    seen = len(ticks)
    time.sleep(0.1)
    assert len(ticks) == seen  # nobody iterates the loop any more
    assert loop.run_until_complete(asyncio.sleep(0, result=5)) == 5


def test_signal_handlers_set_up_by_a_coroutine_work(loop: InlineLoop) -> None:
    """add_signal_handler must run on the main thread; the coroutine runs on a driver thread."""

    async def main() -> str:
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, "usr1")
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            return await asyncio.wait_for(got, 10)
        finally:
            assert loop.remove_signal_handler(signal.SIGUSR1)

    assert loop.run_until_complete(main()) == "usr1"


def test_an_inline_lane_keeps_its_jobs_in_order_across_a_hand_over(loop: InlineLoop) -> None:
    """A job that blocked finishes on its own thread; the lane's next job runs after it, there."""
    runs: list[tuple[str, int]] = []

    async def main() -> None:
        lane = InlineLane(loop, None)
        release = threading.Event()
        done = loop.create_future()

        def first() -> None:
            runs.append(("first", threading.get_ident()))
            leave_loop()
            release.wait(10)
            time.sleep(0.02)  # the second job is queued by now; it must still wait for this one
            runs.append(("first done", threading.get_ident()))

        def second() -> None:
            runs.append(("second", threading.get_ident()))
            loop.call_soon_threadsafe(done.set_result, None)

        lane.submit(first)
        await asyncio.sleep(0.05)  # the loop goes on meanwhile
        lane.submit(second)
        release.set()
        await asyncio.wait_for(done, 10)

    loop.run_until_complete(main())
    assert [name for name, _ in runs] == ["first", "first done", "second"]
    assert runs[0][1] == runs[1][1] == runs[2][1]


def test_standby_threads_end_with_the_loop() -> None:
    loop = InlineLoop()

    async def blocker() -> None:
        # Two hand-overs in a row start a second standby thread.
        event = threading.Event()
        loop.run_job(lambda: (leave_loop(), event.wait(10)))
        await asyncio.sleep(0.05)
        event.set()
        await asyncio.sleep(0.05)

    loop.run_until_complete(blocker())
    started = [t for t in threading.enumerate() if t.name == "wasmhost-loop"]
    assert started
    loop.close()
    for thread in started:
        thread.join(5)
        assert not thread.is_alive()


async def test_the_server_runs_guest_calls_inline_only_on_an_inline_loop(serve, guest) -> None:
    client = await serve(guest("hello"))
    for _ in range(3):
        resp = await client.get("/")
        assert resp.status == 200
    runtime = client.server.app[RUNTIME_KEY]
    running = asyncio.get_running_loop()
    assert isinstance(runtime.threads, ThreadRuntime)
    if isinstance(running, InlineLoop):
        assert runtime.threads.inline is running
        assert not [t for t in threading.enumerate() if t.name.startswith("wasmhost-worker")]
    else:
        assert runtime.threads.inline is None
