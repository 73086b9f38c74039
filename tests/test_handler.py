"""The scheduling core (wasmhost.handler) against a fake engine.

Most tests use real threads (the default ThreadRuntime) with timeouts of
50-200 ms. Two stress tests: 50,000 tasks in a simulated runtime (virtual
clock, random interleavings, every rule checked after every event) and
100,000 tasks on real threads.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import pytest

from wasmhost.handler import (
    HandlerClosedError,
    HandlerStats,
    InstanceTrappedError,
    InstantiationError,
    ProxyHandler,
    RequestTimeoutError,
    TaskRun,
    WorkerError,
)
from wasmhost.handler_runtime import Job

INF = math.inf


# -- the fake engine -------------------------------------------------------------------

class GuestTrap(Exception):
    """What the fake guest raises: a trap, or noticing its store was interrupted."""


@dataclass(eq=False)
class FakeStore:
    store_id: int
    first_req_id: int | None
    interrupted: threading.Event = field(default_factory=threading.Event)
    interrupted_at: float | None = None
    interrupt_reason: str = ""
    interrupt_calls: int = 0
    req_ids: list[int | None] = field(default_factory=list)
    running: int = 0
    profile_writes: int = 0
    releases: int = 0
    released_instance: Any = None
    trapped: bool = False  # a task raised on its own (not because of an interrupt)

    @property
    def disposed(self) -> tuple[int, int]:
        """(profile writes, releases): (1, 1) once its worker has exited."""
        return (self.profile_writes, self.releases)


Body = Callable[[FakeStore, TaskRun], None]


def instant(store: FakeStore, run: TaskRun) -> None:
    pass


class FakeTask:
    """Records how it ended; the first outcome wins, like the server's response future."""

    def __init__(self, body: Body = instant, clock: Callable[[], float] = time.monotonic,
                 on_done: Callable[[], None] | None = None) -> None:
        self.body = body
        self.clock = clock
        self.on_done = on_done
        self.lock = threading.Lock()
        self.outcome: tuple[str, Any] | None = None
        self.done = threading.Event()
        self.fail_calls = 0
        self.run_calls = 0
        self.store: FakeStore | None = None
        self.run: TaskRun | None = None
        self.started_at: float | None = None
        self.failed_at: float | None = None

    def _complete(self, outcome: tuple[str, Any]) -> None:
        with self.lock:
            first = self.outcome is None
            if first:
                self.outcome = outcome
        if first:
            self.done.set()
            if self.on_done is not None:
                self.on_done()

    def fail(self, error: BaseException) -> None:
        with self.lock:
            self.fail_calls += 1
        self.failed_at = self.clock()
        self._complete(("error", error))

    def respond(self) -> None:
        self._complete(("ok", None))

    @property
    def error(self) -> BaseException | None:
        return self.outcome[1] if self.outcome and self.outcome[0] == "error" else None

    def wait(self, timeout: float = 5.0) -> "FakeTask":
        assert self.done.wait(timeout), "task never completed"
        return self


class FakeState:
    """HandlerState whose stores are plain objects; records everything it is asked to do."""

    def __init__(
        self,
        *,
        request_timeout: float = INF,
        idle_instance_timeout: float = INF,
        max_instance_reuse_count: int = 1,
        max_instance_concurrent_reuse_count: int = 1,
        max_instances: int | None = None,
        max_busy_instances: int | None = None,
        busy_slice: float = INF,
        clock: Callable[[], float] = time.monotonic,
        fail_new_store: Callable[[int | None], bool] = lambda req_id: False,
        fail_instantiate: Callable[[FakeStore], bool] = lambda store: False,
        check_timeout_bounds: bool = False,
    ) -> None:
        self.request_timeout = request_timeout
        self.idle_instance_timeout = idle_instance_timeout
        self.max_instance_reuse_count = max_instance_reuse_count
        self.max_instance_concurrent_reuse_count = max_instance_concurrent_reuse_count
        self.max_instances = max_instances
        self.max_busy_instances = max_busy_instances
        self.busy_slice = busy_slice
        self.long_running: list[FakeStore] = []  # task_running_long calls
        self.clock = clock
        self.fail_new_store = fail_new_store
        self.fail_instantiate = fail_instantiate
        self.check_timeout_bounds = check_timeout_bounds
        self.lock = threading.Lock()
        self.stores: list[FakeStore] = []
        self.live_stores = 0
        self.peak_live_stores = 0
        self.peak_concurrency = 0
        self.worker_errors: list[WorkerError] = []
        self.violations: list[str] = []

    def new_store(self, req_id: int | None) -> tuple[FakeStore, Callable[[], None]]:
        if self.fail_new_store(req_id):
            raise RuntimeError("out of memory for a store")
        with self.lock:
            store = FakeStore(len(self.stores) + 1, req_id)
            self.stores.append(store)
            self.live_stores += 1
            self.peak_live_stores = max(self.peak_live_stores, self.live_stores)
            if self.max_instances is not None and self.live_stores > self.max_instances:
                self.violations.append(f"{self.live_stores} live stores > {self.max_instances}")
        return store, partial(self._write_profile, store)

    def _write_profile(self, store: FakeStore) -> None:
        with self.lock:
            store.profile_writes += 1
            if store.releases:
                self.violations.append(f"store {store.store_id}: profile written after release")

    def release(self, store: FakeStore, instance: Any | None) -> None:
        with self.lock:
            store.releases += 1
            store.released_instance = instance
            self.live_stores -= 1
            if store.running:
                self.violations.append(f"store {store.store_id} released while running a task")

    def instantiate(self, store: FakeStore, instance_pre: Any) -> tuple[str, int]:
        if self.fail_instantiate(store):
            raise GuestTrap("start function trapped")
        return ("instance", store.store_id)

    def run_task(self, store: FakeStore, instance: Any, task: FakeTask, run: TaskRun) -> None:
        assert instance == ("instance", store.store_id)
        with self.lock:
            task.run_calls += 1
            task.store, task.run = store, run
            store.req_ids.append(run.req_id)
            store.running += 1
            self.peak_concurrency = max(self.peak_concurrency, store.running)
            if store.running > self.max_instance_concurrent_reuse_count:
                self.violations.append(f"store {store.store_id}: {store.running} tasks at once")
            if len(store.req_ids) > self.max_instance_reuse_count:
                self.violations.append(f"store {store.store_id}: {len(store.req_ids)} tasks in total")
            if task.run_calls > 1:
                self.violations.append("a task ran twice")
        task.started_at = self.clock()
        try:
            if self.check_timeout_bounds and store.interrupted_at is not None:
                self._check_interrupt_time(store, run)
            task.body(store, run)
            task.respond()
        finally:
            with self.lock:
                store.running -= 1

    def _check_interrupt_time(self, store: FakeStore, run: TaskRun) -> None:
        # Simulated runtime only: run_task executes at the end of the task's
        # (virtual) duration, so this run was in flight when the store was interrupted.
        if "timed out" in store.interrupt_reason and not store.trapped:
            t = self.request_timeout
            at = store.interrupted_at
            assert at is not None
            if not (run.accepted_at + t <= at <= run.accepted_at + 2 * t + 1e-12):
                self.violations.append(f"interrupt at {at}, task accepted at {run.accepted_at}")

    def task_running_long(self, store: FakeStore) -> None:
        with self.lock:
            self.long_running.append(store)

    def interrupt(self, store: FakeStore, reason: str) -> None:
        store.interrupted_at = self.clock()
        store.interrupt_reason = reason
        store.interrupt_calls += 1
        store.interrupted.set()

    def handle_worker_error(self, error: WorkerError) -> None:
        with self.lock:
            self.worker_errors.append(error)


# Task bodies for the real-thread tests.

def interruptible_sleep(seconds: float) -> Body:
    def body(store: FakeStore, run: TaskRun) -> None:
        if store.interrupted.wait(seconds):
            raise GuestTrap("interrupted")
    return body


def until_interrupted(store: FakeStore, run: TaskRun) -> None:
    """A CPU-bound guest that only stops when interrupted (epoch deadline)."""
    if not store.interrupted.wait(10):
        raise AssertionError("never interrupted")
    raise GuestTrap("interrupted")


def io_until_interrupted(store: FakeStore, run: TaskRun) -> None:
    with run.waiting_on_io():
        until_interrupted(store, run)


def executing_until(event: threading.Event) -> Body:
    def body(store: FakeStore, run: TaskRun) -> None:
        assert event.wait(5)
    return body


def io_until(event: threading.Event) -> Body:
    def body(store: FakeStore, run: TaskRun) -> None:
        with run.waiting_on_io():
            assert event.wait(5)
    return body


def raising(store: FakeStore, run: TaskRun) -> None:
    raise GuestTrap("unreachable executed")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


def close(handler: ProxyHandler, timeout: float = 5.0) -> None:
    asyncio.run(handler.close(timeout))


def spawn(handler: ProxyHandler, body: Body = instant) -> tuple[int, FakeTask]:
    req_id = handler.next_req_id()
    task = FakeTask(body)
    handler.spawn(req_id, task)
    return req_id, task


def run_one(handler: ProxyHandler, body: Body = instant) -> FakeTask:
    """Spawn a task and wait until its worker is done with it (not just until it responded)."""
    task = spawn(handler, body)[1].wait()
    wait_until(lambda: handler.stats().running_tasks == 0)
    return task


# -- configuration -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("max_instance_reuse_count", 0, "max_instance_reuse_count must be at least 1"),
        ("max_instance_concurrent_reuse_count", 0, "max_instance_concurrent_reuse_count must be at least 1"),
        ("max_instances", 0, "max_instances must be at least 1"),
        ("max_busy_instances", 0, "max_busy_instances must be at least 1"),
        ("busy_slice", 0, "busy_slice must be positive"),
        ("request_timeout", 0, "request_timeout must be positive"),
        ("idle_instance_timeout", -1, "idle_instance_timeout must not be negative"),
    ],
)
def test_invalid_settings_are_rejected(setting: str, value: float, message: str) -> None:
    state = FakeState()
    setattr(state, setting, value)
    with pytest.raises(ValueError, match=message):
        ProxyHandler(state, None)


def test_accessors_and_request_ids() -> None:
    state = FakeState()
    handler = ProxyHandler(state, "pre")
    assert handler.state is state and handler.instance_pre == "pre"
    ids = [handler.next_req_id() for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    close(handler)


# -- reuse ---------------------------------------------------------------------------------

def test_reuse_count_limits_tasks_per_instance() -> None:
    state = FakeState(max_instance_reuse_count=3)
    handler = ProxyHandler(state, None)
    tasks = [run_one(handler) for _ in range(7)]
    assert [t.store.store_id for t in tasks] == [1, 1, 1, 2, 2, 2, 3]  # type: ignore[union-attr]
    # The first two ran out of reuse and exited; the third waits for more.
    wait_until(lambda: state.live_stores == 1)
    assert [s.disposed for s in state.stores] == [(1, 1), (1, 1), (0, 0)]
    close(handler)
    assert [s.disposed for s in state.stores] == [(1, 1)] * 3
    assert state.worker_errors == [] and state.violations == []


def test_direct_handoff_starts_a_worker_per_busy_task() -> None:
    state = FakeState(max_instance_reuse_count=10)
    handler = ProxyHandler(state, None)
    release = threading.Event()
    spawned = [spawn(handler, executing_until(release)) for _ in range(3)]
    # No worker was available for any of them: each went straight to a new worker,
    # and that worker's store was created for it.
    assert handler.stats().queued_tasks == 0
    wait_until(lambda: len(state.stores) == 3)
    assert sorted(s.first_req_id for s in state.stores) == [rid for rid, _ in spawned]  # type: ignore[type-var]
    release.set()
    for _, task in spawned:
        task.wait()
    wait_until(lambda: handler.stats().available_workers == 3)
    _, again = spawn(handler)
    again.wait()
    assert handler.stats().workers_started == 3  # reused, no fourth worker
    close(handler)
    assert state.violations == []


def test_concurrent_reuse_only_while_the_others_wait_on_io() -> None:
    state = FakeState(max_instance_reuse_count=10, max_instance_concurrent_reuse_count=2)
    handler = ProxyHandler(state, None)
    release = threading.Event()
    _, first = spawn(handler, io_until(release))
    wait_until(lambda: first.started_at is not None and handler.stats().available_workers == 1)
    _, second = spawn(handler, io_until(release))
    wait_until(lambda: second.store is not None)
    assert second.store is first.store  # accepted while the first waited on I/O
    _, third = spawn(handler, io_until(release))  # concurrent limit reached: a new instance
    wait_until(lambda: third.store is not None)
    assert third.store is not first.store
    release.set()
    for task in (first, second, third):
        task.wait()
    close(handler)
    assert state.violations == [] and state.worker_errors == []


def test_executing_task_keeps_its_instance_from_accepting() -> None:
    state = FakeState(max_instance_reuse_count=10, max_instance_concurrent_reuse_count=4)
    handler = ProxyHandler(state, None)
    release, resume = threading.Event(), threading.Event()

    def io_then_cpu(store: FakeStore, run: TaskRun) -> None:
        with run.waiting_on_io():
            assert resume.wait(5)
        assert release.wait(5)  # executing again (CPU-bound)

    _, first = spawn(handler, executing_until(release))
    wait_until(lambda: first.store is not None)
    _, second = spawn(handler, io_then_cpu)  # first is executing: a second instance
    wait_until(lambda: second.store is not None)
    assert second.store is not first.store
    wait_until(lambda: handler.stats().available_workers == 1)
    _, third = spawn(handler, executing_until(release))  # second waits on I/O: shares it
    wait_until(lambda: third.store is not None)
    assert third.store is second.store
    resume.set()  # second leaves its I/O wait; third is executing anyway
    wait_until(lambda: handler.stats().available_workers == 0)
    _, fourth = spawn(handler, executing_until(release))
    wait_until(lambda: fourth.store is not None)
    assert fourth.store not in (first.store, second.store)
    release.set()
    for task in (first, second, third, fourth):
        task.wait()
    close(handler)
    assert state.violations == []


# -- idle expiry -------------------------------------------------------------------------------

def test_idle_instance_expires_after_the_idle_timeout() -> None:
    idle = 0.1
    state = FakeState(max_instance_reuse_count=100, idle_instance_timeout=idle)
    handler = ProxyHandler(state, None)
    first = run_one(handler)
    time.sleep(idle / 4)
    second = run_one(handler)
    idle_since = time.monotonic()
    assert second.store is first.store  # still warm
    wait_until(lambda: state.live_stores == 0, timeout=2)
    waited = time.monotonic() - idle_since
    assert idle * 0.9 <= waited < idle + 0.5
    assert first.store.disposed == (1, 1)  # type: ignore[union-attr]
    third = spawn(handler)[1].wait()
    assert third.store is not first.store
    close(handler)
    assert state.worker_errors == []


def test_zero_idle_timeout_drops_instances_once_idle() -> None:
    state = FakeState(max_instance_reuse_count=100, idle_instance_timeout=0)
    handler = ProxyHandler(state, None)
    for _ in range(3):
        spawn(handler)[1].wait()
        wait_until(lambda: state.live_stores == 0)
    assert len(state.stores) == 3 and all(s.disposed == (1, 1) for s in state.stores)
    close(handler)


# -- timeouts -------------------------------------------------------------------------------------

TIMEOUT = 0.1
SLACK = 0.1  # timer and thread wake-up latency allowed on a loaded 2-core machine


def test_timed_out_task_fails_at_once_and_its_store_is_interrupted() -> None:
    state = FakeState(request_timeout=TIMEOUT, max_instance_reuse_count=10)
    handler = ProxyHandler(state, None)
    req_id, task = spawn(handler, until_interrupted)
    task.wait()
    assert isinstance(task.error, RequestTimeoutError)
    store = task.store
    assert store is not None and task.started_at is not None and task.failed_at is not None
    assert TIMEOUT <= task.failed_at - task.run.accepted_at < TIMEOUT + SLACK  # type: ignore[union-attr]
    wait_until(lambda: store.interrupted_at is not None)  # right after the client side failed
    assert store.interrupted_at is not None
    assert TIMEOUT <= store.interrupted_at - task.run.accepted_at < TIMEOUT + SLACK  # type: ignore[union-attr]
    # The instance accepts nothing more and is dropped (reported, profile written once).
    wait_until(lambda: len(state.worker_errors) == 1)
    (error,) = state.worker_errors
    assert isinstance(error.error, RequestTimeoutError)
    assert error.req_ids == (req_id,) and error.worker_id >= 1
    assert store.disposed == (1, 1) and store.interrupt_calls == 1
    after = spawn(handler)[1].wait()
    assert after.store is not store
    close(handler)


def test_client_side_completes_at_the_deadline_even_if_the_guest_keeps_running() -> None:
    state = FakeState(request_timeout=0.05)
    handler = ProxyHandler(state, None)
    finish = threading.Event()
    _, task = spawn(handler, executing_until(finish))  # ignores the interrupt
    task.wait(1)
    assert isinstance(task.error, RequestTimeoutError)
    assert handler.stats().live_workers == 1  # run_task has not returned yet
    store = task.store
    assert store is not None
    wait_until(lambda: store.interrupt_calls == 1)
    finish.set()
    wait_until(lambda: handler.stats().live_workers == 0)
    assert task.fail_calls == 1 and store.disposed == (1, 1)
    close(handler)


def test_concurrent_tasks_each_get_at_least_1x_and_at_most_2x() -> None:
    t = 0.2
    state = FakeState(request_timeout=t, max_instance_reuse_count=10, max_instance_concurrent_reuse_count=4)
    handler = ProxyHandler(state, None)
    a_id, a = spawn(handler, io_until_interrupted)
    wait_until(lambda: handler.stats().available_workers == 1)
    time.sleep(0.6 * t)
    b_id, b = spawn(handler, io_until_interrupted)
    wait_until(lambda: b.store is not None)
    assert b.store is a.store
    store = a.store
    assert store is not None and a.run is not None and b.run is not None
    a.wait()
    # a timed out: its client side completed at 1x, but b is still within its
    # timeout so the store is not interrupted yet, and no new task is accepted.
    assert isinstance(a.error, RequestTimeoutError)
    assert t <= a.failed_at - a.run.accepted_at < t + SLACK  # type: ignore[operator]
    assert store.interrupted_at is None and not b.done.is_set()
    _, c = spawn(handler)
    c.wait()
    assert c.store is not store
    b.wait()
    assert isinstance(b.error, RequestTimeoutError)
    wait_until(lambda: store.interrupted_at is not None)  # b's deadline: no live task left
    interrupted = store.interrupted_at
    assert interrupted is not None
    assert interrupted - b.run.accepted_at >= t  # b ran its full timeout
    assert interrupted - a.run.accepted_at <= 2 * t + SLACK  # a ran less than 2x
    assert interrupted - a.run.accepted_at >= 1.5 * t  # ... and was not cut at 1x
    wait_until(lambda: len(state.worker_errors) == 1)
    (error,) = state.worker_errors
    assert sorted(error.req_ids) == [a_id, b_id] and isinstance(error.error, RequestTimeoutError)
    assert store.interrupt_calls == 1 and store.disposed == (1, 1)
    close(handler)


def test_sibling_finishing_after_a_timeout_triggers_the_interrupt() -> None:
    t = 0.2
    state = FakeState(request_timeout=t, max_instance_reuse_count=10, max_instance_concurrent_reuse_count=2)
    handler = ProxyHandler(state, None)
    finish_b = threading.Event()
    _, a = spawn(handler, io_until_interrupted)
    wait_until(lambda: handler.stats().available_workers == 1)
    time.sleep(t / 2)  # b's deadline comes well after a's
    _, b = spawn(handler, io_until(finish_b))
    a.wait()
    assert a.store is b.store and a.store is not None and a.store.interrupted_at is None
    finish_b.set()  # b finishes within its timeout: now only a (abandoned) is left
    b.wait()
    assert b.error is None
    wait_until(lambda: a.store.interrupted_at is not None)  # type: ignore[union-attr]
    wait_until(lambda: handler.stats().live_workers == 0)
    close(handler)


# -- queue and max_instances -------------------------------------------------------------------

def test_max_instances_bounds_live_instances_and_queues_the_rest() -> None:
    state = FakeState(max_instances=2, max_instance_reuse_count=100)
    handler = ProxyHandler(state, None)
    release = threading.Event()
    tasks = [spawn(handler, executing_until(release))[1] for _ in range(10)]
    assert handler.stats().queued_tasks == 8
    release.set()
    for task in tasks:
        task.wait()
        assert task.error is None
    assert state.peak_live_stores == 2 and len(state.stores) == 2
    close(handler)
    assert state.violations == []


def test_busy_bound_queues_cpu_bound_tasks_for_the_running_instances() -> None:
    state = FakeState(max_busy_instances=2, max_instance_reuse_count=100)
    handler = ProxyHandler(state, None)
    release = threading.Event()
    tasks = [spawn(handler, executing_until(release))[1] for _ in range(6)]
    stats = handler.stats()
    assert stats.live_workers == 2 and stats.busy_workers == 2 and stats.queued_tasks == 4
    release.set()
    for task in tasks:
        assert task.wait().error is None
    assert state.peak_live_stores == 2 and len(state.stores) == 2  # the queue ran on them
    close(handler)
    assert state.violations == []


def test_a_task_waiting_on_io_frees_its_busy_slot() -> None:
    state = FakeState(max_busy_instances=1, max_instance_reuse_count=100)
    handler = ProxyHandler(state, None)
    io_done, cpu_done = threading.Event(), threading.Event()
    io_task = spawn(handler, io_until(io_done))[1]
    wait_until(lambda: handler.stats().busy_workers == 0)  # it waits on I/O: not busy
    cpu_task = spawn(handler, executing_until(cpu_done))[1]
    wait_until(lambda: handler.stats().live_workers == 2)  # so a second instance started
    queued = spawn(handler)[1]
    stats = handler.stats()
    assert stats.busy_workers == 1 and stats.queued_tasks == 1  # but not a third
    cpu_done.set()
    queued.wait()
    assert queued.store is cpu_task.wait().store
    io_done.set()
    assert io_task.wait().error is None
    assert len(state.stores) == 2
    close(handler)


def test_a_long_running_task_stops_counting_as_busy() -> None:
    state = FakeState(max_busy_instances=1, busy_slice=0.05, max_instance_reuse_count=100)
    handler = ProxyHandler(state, None)
    release = threading.Event()
    started = time.monotonic()
    long_task = spawn(handler, executing_until(release))[1]
    short = spawn(handler)[1]
    assert handler.stats().queued_tasks == 1  # behind the busy instance, for now
    short.wait()
    assert time.monotonic() - started >= 0.05  # only once the slice was used up
    wait_until(lambda: len(state.long_running) == 1)
    assert short.store is not None and short.store is not state.long_running[0]  # on a new instance
    assert handler.stats().busy_workers == 0
    release.set()
    assert long_task.wait().error is None
    quick = spawn(handler)[1].wait()  # a quick task is never reported
    assert quick.error is None and len(state.long_running) == 1
    close(handler)
    assert state.violations == []


def test_queued_tasks_start_new_workers_as_slots_free() -> None:
    # Every worker exits after one task, so queued tasks can only run on new
    # workers started when a slot frees: none may be orphaned.
    state = FakeState(max_instances=1, max_instance_reuse_count=1)
    handler = ProxyHandler(state, None)
    tasks = [spawn(handler)[1] for _ in range(50)]
    for task in tasks:
        task.wait()
    assert len(state.stores) == 50 and state.peak_live_stores == 1
    assert handler.stats().queued_tasks == 0
    close(handler)
    assert all(s.disposed == (1, 1) for s in state.stores)


# -- errors -------------------------------------------------------------------------------------------

def test_trap_fails_the_task_and_reports_the_worker() -> None:
    state = FakeState(max_instance_reuse_count=10)
    handler = ProxyHandler(state, None)
    ok = run_one(handler)
    req_id, trapped = spawn(handler, raising)
    trapped.wait()
    assert isinstance(trapped.error, GuestTrap)
    wait_until(lambda: len(state.worker_errors) == 1)
    (error,) = state.worker_errors
    assert error.error is trapped.error and error.req_ids == (ok.run.req_id, req_id)  # type: ignore[union-attr]
    assert ok.store is trapped.store and trapped.store.disposed == (1, 1)  # type: ignore[union-attr]
    after = spawn(handler)[1].wait()
    assert after.store is not ok.store  # a trapped instance is never reused
    close(handler)


def test_trap_takes_down_concurrent_siblings() -> None:
    state = FakeState(max_instance_reuse_count=10, max_instance_concurrent_reuse_count=2)
    handler = ProxyHandler(state, None)
    a_id, a = spawn(handler, io_until_interrupted)
    wait_until(lambda: handler.stats().available_workers == 1)
    b_id, b = spawn(handler, raising)
    b.wait()
    a.wait()
    assert isinstance(b.error, GuestTrap) and isinstance(a.error, InstanceTrappedError)
    wait_until(lambda: len(state.worker_errors) == 1)
    (error,) = state.worker_errors
    assert error.error is b.error and sorted(error.req_ids) == [a_id, b_id]
    assert a.store is b.store and a.store.interrupt_calls == 1  # type: ignore[union-attr]
    close(handler)


def test_instantiation_failure_fails_the_task_and_writes_the_profile() -> None:
    state = FakeState(fail_instantiate=lambda store: store.store_id == 1)
    handler = ProxyHandler(state, None)
    req_id, task = spawn(handler)
    task.wait()
    assert isinstance(task.error, InstantiationError) and isinstance(task.error.error, GuestTrap)
    wait_until(lambda: len(state.worker_errors) == 1)
    assert state.worker_errors[0].req_ids == (req_id,)
    assert state.stores[0].disposed == (1, 1)  # the store existed
    assert state.stores[0].released_instance is None
    assert spawn(handler)[1].wait().error is None  # the next instance works
    close(handler)


def test_store_creation_failure_fails_the_task() -> None:
    state = FakeState(fail_new_store=lambda req_id: req_id == 0)
    handler = ProxyHandler(state, None)
    req_id, task = spawn(handler)
    assert req_id == 0
    task.wait()
    assert isinstance(task.error, InstantiationError)
    wait_until(lambda: len(state.worker_errors) == 1)
    assert state.stores == [] and handler.stats().live_workers == 0
    close(handler)


def test_profile_written_once_per_worker_whatever_ends_it() -> None:
    state = FakeState(
        request_timeout=0.05, idle_instance_timeout=0.2, max_instance_reuse_count=2,
        fail_instantiate=lambda store: store.store_id == 4,
    )
    handler = ProxyHandler(state, None)
    # Ends: reuse count (store 1), trap (2), timeout (3), instantiation (4), idle (5).
    bodies: list[Body] = [instant, instant, instant, raising, until_interrupted, instant, instant]
    for body in bodies:
        run_one(handler, body)
    wait_until(lambda: state.live_stores == 0)
    assert len(state.stores) >= 5 and all(s.disposed == (1, 1) for s in state.stores)
    assert {type(e.error) for e in state.worker_errors} == {GuestTrap, RequestTimeoutError, InstantiationError}
    close(handler)


# -- shutdown -----------------------------------------------------------------------------------------

async def test_close_lets_running_tasks_finish_and_fails_queued_ones() -> None:
    state = FakeState(max_instances=1, max_instance_reuse_count=10)
    handler = ProxyHandler(state, None)
    running = FakeTask(interruptible_sleep(0.05))
    queued = FakeTask()
    handler.spawn(1, running)
    handler.spawn(2, queued)
    await handler.close(timeout=2)
    assert running.outcome == ("ok", None)
    assert isinstance(queued.error, HandlerClosedError)
    late = FakeTask()
    handler.spawn(3, late)
    assert isinstance(late.error, HandlerClosedError)
    assert state.live_stores == 0 and state.stores[0].disposed == (1, 1)


async def test_close_interrupts_what_does_not_finish_in_time() -> None:
    state = FakeState()
    handler = ProxyHandler(state, None)
    stuck = FakeTask(until_interrupted)
    handler.spawn(1, stuck)
    await asyncio.sleep(0.02)
    started = time.monotonic()
    await handler.close(timeout=0.05)
    assert time.monotonic() - started < 1
    assert isinstance(stuck.error, HandlerClosedError)
    assert state.stores[0].interrupt_calls == 1 and state.stores[0].disposed == (1, 1)


# -- a deterministic simulated runtime -------------------------------------------------------------

class SimTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Job) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class SimWorker:
    """What the simulation saw of one worker's tasks (checked against the rules)."""

    in_flight: set[TaskRun] = field(default_factory=set)
    accepted: int = 0
    poisoned: bool = False  # one of its tasks timed out or trapped: accepts nothing more


class SimRuntime:
    """Virtual clock, every lane job taking a random virtual duration; ties run in random order.

    A task job may also wait on I/O for part of its duration (the lane enters and
    leaves ``run.waiting_on_io()`` at random virtual times before running it), so
    one instance can hold several tasks at once. Each task handed to a lane is
    checked against the acceptance rules at that moment, which is the moment the
    core accepted it (the submit is an effect of the same event).
    """

    def __init__(self, rng: random.Random, job_duration: Callable[[], float], io_share: float) -> None:
        self.rng = rng
        self.job_duration = job_duration
        self.io_share = io_share
        self.clock = 0.0
        self._events: list[tuple[float, float, int, SimTimer]] = []
        self._seq = itertools.count()
        self.workers: dict[int, SimWorker] = {}
        self.reuse = self.concurrent = 1
        self.violations: list[str] = []
        self.io_waits = 0
        self.peak_concurrency = 0

    def configure(self, reuse: int, concurrent: int) -> None:
        self.workers.clear()  # worker ids restart with each handler
        self.reuse, self.concurrent = reuse, concurrent

    def now(self) -> float:
        return self.clock

    def call_at(self, when: float, callback: Job) -> SimTimer:
        timer = SimTimer(callback)
        heapq.heappush(self._events, (when, self.rng.random(), next(self._seq), timer))
        return timer

    def new_lane(self, name: str) -> "SimLane":
        return SimLane(self)

    def shutdown(self) -> None:
        pass

    def step(self) -> bool:
        while self._events:
            when, _, _, timer = heapq.heappop(self._events)
            if timer.cancelled:
                continue
            self.clock = max(self.clock, when)
            timer.cancelled = True
            timer.callback()
            return True
        return False

    def task_started(self, run: TaskRun) -> None:
        worker = self.workers.setdefault(run.worker_id, SimWorker())
        others = [r for r in worker.in_flight if not r.returned]
        if worker.poisoned or any(r.abandoned for r in others):
            self.violations.append("accepted a task after another one timed out or trapped")
        if any(not r.is_waiting_on_io for r in others):
            self.violations.append("accepted a task while another one was executing")
        worker.in_flight = set(others) | {run}
        worker.accepted += 1
        self.peak_concurrency = max(self.peak_concurrency, len(worker.in_flight))
        if len(worker.in_flight) > self.concurrent or worker.accepted > self.reuse:
            self.violations.append(f"worker {run.worker_id} over its limits")

    def task_ended(self, run: TaskRun) -> None:
        worker = self.workers[run.worker_id]
        worker.in_flight.discard(run)
        if run.task.error is not None:  # type: ignore[attr-defined]
            worker.poisoned = True


def task_run_of(job: Job) -> TaskRun | None:
    """The task a lane job runs, if any (test-only peek at how the core builds its jobs)."""
    args = getattr(job, "args", ())
    return args[0] if args and isinstance(args[0], TaskRun) else None


class SimLane:
    """Runs its jobs in order, each finishing a random virtual duration after it starts."""

    def __init__(self, sim: SimRuntime) -> None:
        self.sim = sim
        self.jobs: deque[Job] = deque()
        self.busy = False
        self.released = False

    def submit(self, job: Job) -> None:
        assert not self.released, "job submitted to a released lane"
        run = task_run_of(job)
        if run is not None:
            self.sim.task_started(run)
        self.jobs.append(job)
        if not self.busy:
            self._start_next()

    def _start_next(self) -> None:
        self.busy = True
        sim = self.sim
        duration = sim.job_duration()
        run = task_run_of(self.jobs[0])
        if run is not None and sim.rng.random() < sim.io_share:
            enter, leave = sorted((sim.rng.uniform(0, duration), sim.rng.uniform(0, duration)))
            # Chained, so the phases keep their order even at equal virtual times.
            sim.call_at(sim.clock + enter, partial(self._enter_io, run, leave - enter, duration - leave))
        else:
            sim.call_at(sim.clock + duration, self._finish_next)

    def _enter_io(self, run: TaskRun, io_time: float, rest: float) -> None:
        io_wait = run.waiting_on_io()
        io_wait.__enter__()
        self.sim.io_waits += 1
        self.sim.call_at(self.sim.clock + io_time, partial(self._leave_io, io_wait, rest))

    def _leave_io(self, io_wait: Any, rest: float) -> None:
        io_wait.__exit__(None, None, None)
        self.sim.call_at(self.sim.clock + rest, self._finish_next)

    def _finish_next(self) -> None:
        job = self.jobs.popleft()
        job()
        run = task_run_of(job)
        if run is not None:
            self.sim.task_ended(run)
        if self.jobs:
            self._start_next()
        else:
            self.busy = False

    def release(self) -> None:
        self.released = True


def check_stats(stats: HandlerStats, max_instances: int | None, max_busy: int | None = None) -> None:
    if max_instances is not None:
        assert stats.live_workers <= max_instances
    if stats.queued_tasks:
        # Nothing waits in the queue while a worker could take it or a new one could start.
        assert stats.available_workers == 0
        assert (max_instances is not None and stats.live_workers == max_instances) or (
            max_busy is not None and stats.busy_workers >= max_busy
        )


def check_tasks(tasks: list[FakeTask], state: FakeState) -> None:
    assert state.violations == []
    for task in tasks:
        assert task.outcome is not None, "task never completed"
        assert task.fail_calls <= 1 and task.run_calls <= 1


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_stress_simulated(seed: int) -> None:
    """12,500 tasks per seed in virtual time, every rule checked after every event."""
    rng = random.Random(seed)
    busy_rng = random.Random(-seed)
    n_tasks = 12_500

    def duration() -> float:  # of any lane job: a task, an instantiation, an exit
        roll = rng.random()
        return 0.0 if roll < 0.7 else rng.uniform(0, 0.002) if roll < 0.98 else rng.uniform(0, 0.05)

    sim = SimRuntime(rng, duration, io_share=0.3)
    rounds = 0
    tasks: list[FakeTask] = []
    while len(tasks) < n_tasks:
        rounds += 1
        max_instances = rng.choice([None, 1, 2, 3, 8, 32])
        max_busy = busy_rng.choice([None, None, 1, 2, 4])  # own RNG: the other draws stay as they were
        busy_slice = busy_rng.choice([INF, 0.001, 0.01])
        timeout = rng.choice([INF, 0.003, 0.02])
        state = FakeState(
            request_timeout=timeout,
            idle_instance_timeout=rng.choice([0, 0.0001, 0.001, 0.01, INF]),
            max_instance_reuse_count=rng.choice([1, 2, 3, 10, 100, 10_000]),
            max_instance_concurrent_reuse_count=rng.choice([1, 1, 2, 4]),
            max_instances=max_instances,
            max_busy_instances=max_busy,
            busy_slice=busy_slice,
            clock=sim.now,
            fail_new_store=lambda req_id: rng.random() < 0.005,
            fail_instantiate=lambda store: rng.random() < 0.005,
            check_timeout_bounds=True,
        )
        handler = ProxyHandler(state, None, runtime=sim)
        sim.configure(state.max_instance_reuse_count, state.max_instance_concurrent_reuse_count)
        round_tasks: list[FakeTask] = []
        mean_gap = rng.choice([0.0, 0.00005, 0.0005])

        def sim_body(store: FakeStore, run: TaskRun) -> None:
            if store.interrupted.is_set():
                raise GuestTrap("interrupted")
            roll = rng.random()
            if roll < 0.2:
                with run.waiting_on_io():  # may let a queued task in meanwhile
                    pass
            elif roll < 0.21:
                store.trapped = True
                raise GuestTrap("guest trapped")

        def arrive(remaining: int) -> None:
            task = FakeTask(sim_body, clock=sim.now)
            round_tasks.append(task)
            handler.spawn(handler.next_req_id(), task)
            if remaining > 1:
                gap = rng.expovariate(1 / mean_gap) if mean_gap else 0.0
                sim.call_at(sim.clock + gap, partial(arrive, remaining - 1))

        sim.call_at(sim.clock, partial(arrive, min(2_500, n_tasks - len(tasks))))
        while sim.step():
            check_stats(handler.stats(), max_instances, max_busy)
        stats = handler.stats()
        assert stats.queued_tasks == 0 and stats.running_tasks == 0
        if math.isfinite(state.idle_instance_timeout):
            assert stats.live_workers == 0 and state.live_stores == 0
            assert all(s.disposed == (1, 1) for s in state.stores)
        check_tasks(round_tasks, state)
        for task in round_tasks:
            if isinstance(task.error, RequestTimeoutError):
                assert task.run is not None and task.failed_at == task.run.deadline  # exactly 1x
            if task.error is None:
                assert task.run_calls == 1
        tasks.extend(round_tasks)
    assert sim.violations == []
    assert rounds >= 5 and sim.io_waits > 1000 and sim.peak_concurrency >= 2


def tiny_sleep(store: FakeStore, run: TaskRun) -> None:
    time.sleep(0.0002)


def tiny_io(store: FakeStore, run: TaskRun) -> None:
    with run.waiting_on_io():
        time.sleep(0.0002)


def timing_out(store: FakeStore, run: TaskRun) -> None:
    if store.interrupted.wait(0.05):
        raise GuestTrap("interrupted")


def test_stress_real_threads() -> None:
    """100,000 tasks on real threads: 5 rounds, random reuse limits and idle timeouts."""
    rng = random.Random(7)
    # (max_instances, max_busy_instances, concurrent reuse, request timeout) per round;
    # the rest is random.
    rounds = [(4, None, 1, INF), (None, 2, 1, INF), (3, None, 3, INF), (8, 1, 1, 0.02), (None, 3, 2, 5.0)]
    peak_queued = peak_concurrency = timed_out = 0
    for max_instances, max_busy, concurrent, timeout in rounds:
        state = FakeState(
            max_instances=max_instances,
            max_busy_instances=max_busy,
            busy_slice=0.0002 if max_busy == 2 else INF,
            max_instance_concurrent_reuse_count=concurrent,
            request_timeout=timeout,
            max_instance_reuse_count=rng.choice([1, 2, 7, 50, 1000]),
            idle_instance_timeout=rng.choice([0, 0.0005, 0.001, 0.002]),
        )
        handler = ProxyHandler(state, None)
        in_flight = threading.Semaphore(64)  # a client with 64 connections
        tasks: list[FakeTask] = []
        for req_id in range(20_000):
            roll = rng.random()
            body = (
                instant if roll < 0.97 else tiny_sleep if roll < 0.985
                else timing_out if roll > 0.9995 and timeout < 1 else tiny_io
            )
            in_flight.acquire()
            task = FakeTask(body, on_done=in_flight.release)
            tasks.append(task)
            handler.spawn(req_id, task)
            if req_id % 256 == 0:
                stats = handler.stats()
                check_stats(stats, max_instances, max_busy)
                peak_queued = max(peak_queued, stats.queued_tasks)
        for task in tasks:
            task.wait(10)
        close(handler)
        check_tasks(tasks, state)
        assert state.live_stores == 0 and all(s.disposed == (1, 1) for s in state.stores)
        if max_instances is not None:
            assert state.peak_live_stores <= max_instances
        peak_concurrency = max(peak_concurrency, state.peak_concurrency)
        timed_out += sum(isinstance(task.error, RequestTimeoutError) for task in tasks)
    assert peak_queued > 0 and peak_concurrency >= 2 and timed_out > 0
