"""Which component instance runs which request: the Python ``ProxyHandler``.

The counterpart of wasmtime's ``wasmtime_wasi_http::handler::ProxyHandler``.
A *worker* owns one store with one component instance and runs *tasks*
(requests) in it, reusing the instance for up to ``max_instance_reuse_count``
tasks. The core knows nothing of HTTP or wasmtime: a :class:`HandlerState`
creates stores, instantiates, runs a task, interrupts and releases a store.

Threading. Each worker runs its tasks on *lanes* (one per concurrently
running task) from a :class:`~wasmhost.handler_runtime.HandlerRuntime`: an
OS thread each, or the thread driving an InlineLoop, which a task leaves
before it blocks or once it runs long; either way guests use every core and a
guest blocked on I/O blocks nobody else. All
scheduling state lives in :class:`ProxyHandler` behind one lock; every event
(spawn, a task returning, an I/O wait starting or ending, a timer) takes it,
updates the state, and collects *effects* (callbacks into the state, the
tasks, the lanes) that run after the lock is released.

Dispatch. ``spawn`` queues the task and dispatches the queue at once: to an
available worker, else to a newly started worker (the direct handoff of the
reference, skipping the queue) while fewer than ``max_instances`` are live
and fewer than ``max_busy_instances`` are *busy* (starting, or running a task
that is not waiting on I/O). The second bound keeps CPU-bound load on as many
instances as there are cores to run them, instead of one cold instance per
request in flight; tasks blocked on I/O do not count, so I/O-bound load still
gets an instance per request, and neither does a task that has run for
``busy_slice`` (found by a sweep every ``busy_slice / 2`` while tasks run, so
between 1x and 1.5x; it is told through ``HandlerState.task_running_long``),
so a few long requests cannot hold every other request in the queue.
Because decisions happen under the lock, the reference's "start a worker if
the available count dropped to zero meanwhile" race cannot occur; instead
this invariant holds between events, so no task is ever orphaned in the queue:

    queue non-empty  =>  no worker is available  and
                         (max_instances are live  or  max_busy_instances are busy)

(a worker that becomes able to accept takes from the queue first; a worker
that stops being busy, or exits, dispatches the queue).

A worker accepts a task only while it has served fewer than
``max_instance_reuse_count`` tasks, runs fewer than
``max_instance_concurrent_reuse_count``, none of its running tasks is
executing (all wait on I/O, reported through :meth:`TaskRun.waiting_on_io`;
a new task counts as executing) and it is not draining. A worker with no task
for ``idle_instance_timeout`` exits, as does a running-out or draining one once
its tasks are done.

Timeouts (``T = request_timeout``). Each accepted task gets a deadline
``accepted_at + T``. At the deadline a task still running is *abandoned*: its
client side completes at once (``task.fail(RequestTimeoutError)``) and its
worker drains (accepts nothing more). The store is interrupted once every
task still running on it is abandoned, i.e. each other task has finished or
reached its own deadline, and the worker exits once all have returned.

* At least 1x: nothing but the interrupt stops a task, and it waits until
  every non-abandoned task of the store has reached its deadline.
* At most 2x: let ``d1`` be the first deadline reached on a worker (that of
  its oldest running task). From then on it accepts nothing, so every task on
  it was accepted before ``d1`` and has a deadline ``<= d1 + T``; the
  interrupt comes by then. Any task ``i`` accepted at ``a_i`` and still running
  has ``d1 <= a_i + T`` (``d1`` was the first deadline), so it is interrupted
  by ``a_i + 2T``. With one task per instance (wasi 0.2) the interrupt comes
  at exactly 1x.
* The client side of a timed-out task completes at exactly 1x, whatever the
  guest does; the 2x bound is on how long its wasm may keep running.

A task that raises in ``run_task`` poisons its instance: its sibling tasks are
abandoned with :class:`InstanceTrappedError` and the store is interrupted at
once, as are the stores still running when ``close`` runs out of time.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
from collections import deque
from functools import partial
from typing import Any, Callable

from .handler_api import (
    HandlerClosedError,
    HandlerState,
    HandlerStats,
    InstanceTrappedError,
    InstantiationError,
    RequestTimeoutError,
    Task,
    WorkerError,
    WriteProfile,
)
from .handler_runtime import HandlerRuntime, Lane, ThreadRuntime
from .handler_worker import TaskRun, WorkerPhase, WorkerRecord

__all__ = [
    "HandlerClosedError", "HandlerState", "HandlerStats", "InstanceTrappedError",
    "InstantiationError", "ProxyHandler", "RequestTimeoutError", "Task", "TaskRun",
    "WorkerError", "WriteProfile",
]

log = logging.getLogger("wasmhost.handler")

Effect = Callable[[], object]


def _run_effects(effects: list[Effect]) -> None:
    for effect in effects:
        try:
            effect()
        except Exception:
            log.exception("handler callback failed")


def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


class ProxyHandler:
    """Runs spawned tasks on reused instances; see the module docstring for the rules."""

    def __init__(self, state: HandlerState, instance_pre: Any, *, runtime: HandlerRuntime | None = None) -> None:
        self._max_reuse = state.max_instance_reuse_count
        self._max_concurrent = state.max_instance_concurrent_reuse_count
        self._max_instances = state.max_instances
        self._max_busy = state.max_busy_instances
        self._busy_slice = float(state.busy_slice)
        self._request_timeout = float(state.request_timeout)
        self._idle_timeout = float(state.idle_instance_timeout)
        if self._max_reuse < 1:
            raise ValueError(f"max_instance_reuse_count must be at least 1 (got {self._max_reuse})")
        if self._max_concurrent < 1:
            raise ValueError(
                f"max_instance_concurrent_reuse_count must be at least 1 (got {self._max_concurrent})"
            )
        if self._max_instances is not None and self._max_instances < 1:
            raise ValueError(f"max_instances must be at least 1 or None (got {self._max_instances})")
        if self._max_busy is not None and self._max_busy < 1:
            raise ValueError(f"max_busy_instances must be at least 1 or None (got {self._max_busy})")
        if not self._busy_slice > 0:
            raise ValueError(f"busy_slice must be positive (got {self._busy_slice})")
        if not self._request_timeout > 0:
            raise ValueError(f"request_timeout must be positive (got {self._request_timeout})")
        if not self._idle_timeout >= 0:
            raise ValueError(f"idle_instance_timeout must not be negative (got {self._idle_timeout})")
        self._state = state
        self._instance_pre = instance_pre
        self._owns_runtime = runtime is None
        self._runtime: HandlerRuntime = runtime if runtime is not None else ThreadRuntime()
        self._lock = threading.Lock()
        self._queue: deque[tuple[int | None, Task]] = deque()
        self._workers: dict[int, WorkerRecord] = {}
        self._available: dict[int, WorkerRecord] = {}  # insertion order = when it became available
        self._worker_ids = itertools.count(1)
        self._req_ids = itertools.count()
        self._closing = False
        self._force_closed = False
        self._on_all_exited: list[Effect] = []
        self._running = 0
        self._busy = 0  # workers with .busy set
        # One timer sweeps for tasks that used up busy_slice (cheaper than a timer per task).
        self._slices_on = self._max_busy is not None and math.isfinite(self._busy_slice)
        self._slice_sweep: Any = None
        self._workers_started = 0
        self._tasks_accepted = 0

    @property
    def state(self) -> HandlerState:
        return self._state

    @property
    def instance_pre(self) -> Any:
        return self._instance_pre

    def next_req_id(self) -> int:
        return next(self._req_ids)  # itertools.count is atomic under the GIL

    def stats(self) -> HandlerStats:
        with self._lock:
            return HandlerStats(
                len(self._workers), len(self._available), len(self._queue), self._running,
                self._workers_started, self._tasks_accepted, self._busy,
            )

    def spawn(self, req_id: int | None, task: Task) -> None:
        """Run ``task`` on some instance (see module doc); ``req_id`` is for logs and errors."""
        effects: list[Effect] = []
        with self._lock:
            if self._closing:
                effects.append(partial(task.fail, HandlerClosedError("the server is shutting down")))
            else:
                self._queue.append((req_id, task))
                self._dispatch_queued(effects)
        _run_effects(effects)

    async def close(self, timeout: float = 30.0, interrupt_grace: float = 1.0) -> None:
        """Stop all workers: queued tasks fail at once, running ones get ``timeout`` seconds
        to finish; then they are failed and their stores interrupted, and workers get
        ``interrupt_grace`` more seconds to exit."""
        loop = asyncio.get_running_loop()
        all_exited: asyncio.Future[None] = loop.create_future()
        effects: list[Effect] = []
        with self._lock:
            self._closing = True
            while self._queue:
                _, task = self._queue.popleft()
                effects.append(partial(task.fail, HandlerClosedError("the server is shutting down")))
            for worker in list(self._workers.values()):
                worker.draining = True
                self._settle(worker, effects)
            notify = partial(loop.call_soon_threadsafe, _resolve, all_exited)
            if self._workers:
                self._on_all_exited.append(notify)
            else:
                all_exited.set_result(None)
        _run_effects(effects)
        if not await self._wait(all_exited, timeout):
            effects = []
            with self._lock:
                self._force_closed = True
                for worker in self._workers.values():
                    for run in list(worker.runs):
                        if not run.abandoned:
                            self._abandon(run, HandlerClosedError("the server shut down"), effects)
                    self._settle(worker, effects)
            _run_effects(effects)
            if not await self._wait(all_exited, interrupt_grace):
                log.warning("%d instances still running after shutdown", self.stats().live_workers)
                with self._lock:  # this loop may be gone when the stragglers exit
                    if notify in self._on_all_exited:
                        self._on_all_exited.remove(notify)
        if self._owns_runtime:
            self._runtime.shutdown()

    @staticmethod
    async def _wait(future: "asyncio.Future[None]", timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- scheduling (lock held) ------------------------------------------------------
    def _dispatch_queued(self, effects: list[Effect], spare_lane: Lane | None = None) -> bool:
        """Hand queued tasks to available workers, then to new ones while under max_instances.

        A new worker gets ``spare_lane`` (an exiting worker's) if given; returns whether it did.
        """
        queue = self._queue
        while queue and self._available:
            # The most recently available worker: warm, and it lets the others idle out.
            worker = next(reversed(self._available.values()))
            req_id, task = queue.popleft()
            self._accept(worker, req_id, task, effects)
            self._settle(worker, effects)
        return self._start_workers(effects, spare_lane)

    def _start_workers(self, effects: list[Effect], spare_lane: Lane | None = None) -> bool:
        """Start workers for queued tasks while under max_instances and max_busy_instances."""
        queue = self._queue
        lane_for_next = spare_lane
        while (
            queue
            and (self._max_instances is None or len(self._workers) < self._max_instances)
            and (self._max_busy is None or self._busy < self._max_busy)
        ):
            req_id, task = queue.popleft()
            worker = WorkerRecord(next(self._worker_ids))  # busy: it is starting
            self._busy += 1
            self._workers[worker.worker_id] = worker
            self._workers_started += 1
            effects.append(partial(self._launch, worker, req_id, task, lane_for_next))
            lane_for_next = None
        return spare_lane is not None and lane_for_next is None

    def _update_busy(self, worker: WorkerRecord, effects: list[Effect]) -> None:
        """Recount ``worker`` as busy or not; a worker that stops being busy may let one start."""
        busy = worker.phase is WorkerPhase.STARTING or (
            worker.phase is WorkerPhase.RUNNING and worker.executing > 0 and any(
                not run.abandoned and not run.is_waiting_on_io and not run.long_running for run in worker.runs
            )
        )
        if busy == worker.busy:
            return
        worker.busy = busy
        self._busy += 1 if busy else -1
        if not busy and self._queue:
            self._start_workers(effects)

    def _can_accept(self, worker: WorkerRecord) -> bool:
        return (
            not worker.draining
            and worker.accepted < self._max_reuse
            and len(worker.runs) < self._max_concurrent
            and worker.executing == 0
        )

    def _accept(self, worker: WorkerRecord, req_id: int | None, task: Task, effects: list[Effect]) -> None:
        now = self._runtime.now()
        run = TaskRun(self, worker, task, req_id, now, now + self._request_timeout)
        worker.runs.add(run)
        worker.live_runs += 1
        worker.executing += 1  # assume CPU-bound until it waits on I/O
        worker.accepted += 1
        if req_id is not None:
            worker.req_ids.append(req_id)
        self._running += 1
        self._tasks_accepted += 1
        if math.isfinite(run.deadline):
            run._timer = self._runtime.call_at(run.deadline, partial(self._on_deadline, run))
        if self._slices_on and self._slice_sweep is None:
            self._slice_sweep = self._runtime.call_at(now + self._busy_slice / 2, self._sweep_slices)
        self._cancel_idle_timer(worker)
        lane = worker.idle_lanes.pop() if worker.idle_lanes else None
        effects.append(partial(self._submit_run, run, lane))

    def _abandon(self, run: TaskRun, error: BaseException, effects: list[Effect]) -> None:
        """Fail the client side of a running task now; its worker drains."""
        worker = run._worker
        run.abandoned = True
        worker.live_runs -= 1
        worker.draining = True
        if worker.error is None:
            worker.error = error
        if not worker.interrupt_reason:
            worker.interrupt_reason = str(error)
        if run._timer is not None:
            run._timer.cancel()
            run._timer = None
        effects.append(partial(run.task.fail, error))

    def _settle(self, worker: WorkerRecord, effects: list[Effect]) -> None:
        """Decide what a running worker does next, after any change to it."""
        try:
            self._settle_running(worker, effects)
        finally:
            self._update_busy(worker, effects)

    def _settle_running(self, worker: WorkerRecord, effects: list[Effect]) -> None:
        if worker.phase is not WorkerPhase.RUNNING:
            return
        if worker.runs and worker.live_runs == 0 and not worker.interrupted:
            # Only abandoned tasks are left (see "Timeouts" in the module doc).
            worker.interrupted = True
            effects.append(partial(self._state.interrupt, worker.store, worker.interrupt_reason))
        while self._queue and self._can_accept(worker):
            req_id, task = self._queue.popleft()
            self._accept(worker, req_id, task, effects)
        if self._can_accept(worker):
            if worker.worker_id not in self._available:
                self._available[worker.worker_id] = worker
            if not worker.runs and worker.idle_timer is None:
                if self._idle_timeout == 0:
                    self._begin_exit(worker, effects)
                elif math.isfinite(self._idle_timeout):
                    worker.idle_timer = self._runtime.call_at(
                        self._runtime.now() + self._idle_timeout,
                        partial(self._on_idle_timeout, worker, worker.idle_generation),
                    )
        else:
            self._available.pop(worker.worker_id, None)
            if not worker.runs:
                self._begin_exit(worker, effects)

    def _cancel_idle_timer(self, worker: WorkerRecord) -> None:
        worker.idle_generation += 1
        if worker.idle_timer is not None:
            worker.idle_timer.cancel()
            worker.idle_timer = None

    def _begin_exit(self, worker: WorkerRecord, effects: list[Effect]) -> None:
        worker.phase = WorkerPhase.EXITING  # not busy: _settle recounts it
        self._available.pop(worker.worker_id, None)
        self._cancel_idle_timer(worker)
        lane = worker.idle_lanes.pop()  # every lane is idle: no task is running
        effects.append(partial(lane.submit, partial(self._exit_job, worker, lane)))

    def _forget(self, worker: WorkerRecord, effects: list[Effect], spare_lane: Lane | None = None) -> bool:
        """The worker's instance is gone: free its slot (see _dispatch_queued for spare_lane)."""
        del self._workers[worker.worker_id]
        handed_over = self._dispatch_queued(effects, spare_lane)
        if not self._workers:
            effects.extend(self._on_all_exited)
            self._on_all_exited.clear()
        return handed_over

    # -- events (take the lock) ------------------------------------------------------
    def _launch(self, worker: WorkerRecord, req_id: int | None, task: Task, lane: Lane | None = None) -> None:
        """Effect: give a new worker its first lane."""
        try:
            if lane is None:
                lane = self._runtime.new_lane(f"wasmhost-worker-{worker.worker_id}")
        except Exception as exc:  # e.g. "can't start new thread"
            error = InstantiationError(exc)
            effects: list[Effect] = [partial(task.fail, error)]
            with self._lock:
                worker.phase = WorkerPhase.EXITING
                self._update_busy(worker, effects)
                self._forget(worker, effects)
            _run_effects(effects)
            self._report(WorkerError(worker.worker_id, () if req_id is None else (req_id,), error))
            return
        lane.submit(partial(self._start_job, worker, lane, req_id, task))

    def _start_job(self, worker: WorkerRecord, lane: Lane, req_id: int | None, task: Task) -> None:
        """On the worker's first lane: create the store and instance, then accept ``task``."""
        error: BaseException | None = None
        try:
            worker.store, worker.write_profile = self._state.new_store(req_id)
            worker.has_store = True
            worker.instance = self._state.instantiate(worker.store, self._instance_pre)
        except BaseException as exc:
            error = InstantiationError(exc)
        effects: list[Effect] = []
        with self._lock:
            worker.idle_lanes.append(lane)
            worker.phase = WorkerPhase.RUNNING
            if error is None and self._force_closed:
                error = HandlerClosedError("the server shut down")
            if error is None:
                self._accept(worker, req_id, task, effects)
            else:
                if req_id is not None:
                    worker.req_ids.append(req_id)
                worker.draining = True
                worker.error = error
                effects.append(partial(task.fail, error))
            self._settle(worker, effects)
        _run_effects(effects)

    def _submit_run(self, run: TaskRun, lane: Lane | None) -> None:
        """Effect: start an accepted task on a lane of its worker."""
        try:
            if lane is None:
                lane = self._runtime.new_lane(f"wasmhost-worker-{run.worker_id}")
        except Exception as exc:
            self._run_returned(run, exc)
            return
        run._lane = lane
        lane.submit(partial(self._run_job, run))

    def _run_job(self, run: TaskRun) -> None:
        worker = run._worker
        error: BaseException | None = None
        try:
            self._state.run_task(worker.store, worker.instance, run.task, run)
        except BaseException as exc:
            error = exc
        self._run_returned(run, error)

    def _run_returned(self, run: TaskRun, error: BaseException | None) -> None:
        worker = run._worker
        effects: list[Effect] = []
        with self._lock:
            run.returned = True
            worker.runs.discard(run)
            self._running -= 1
            if run._lane is not None:
                worker.idle_lanes.append(run._lane)
            if not run.is_waiting_on_io:
                worker.executing -= 1
            if run._timer is not None:
                run._timer.cancel()
                run._timer = None
            if not run.abandoned:
                worker.live_runs -= 1
                if error is not None:
                    # A trap poisons the instance: its other tasks cannot finish either.
                    effects.append(partial(run.task.fail, error))
                    if worker.error is None:
                        worker.error = error
                    worker.draining = True
                    for other in list(worker.runs):
                        if not other.abandoned:
                            self._abandon(other, InstanceTrappedError(f"instance trapped: {error}"), effects)
            self._settle(worker, effects)
        _run_effects(effects)

    def _set_waiting_on_io(self, run: TaskRun, waiting: bool) -> None:
        effects: list[Effect] = []
        with self._lock:
            if run.returned or run.is_waiting_on_io == waiting:
                return
            run.is_waiting_on_io = waiting
            run._worker.executing += -1 if waiting else 1
            self._settle(run._worker, effects)
        _run_effects(effects)

    def _on_deadline(self, run: TaskRun) -> None:
        effects: list[Effect] = []
        with self._lock:
            if run.returned or run.abandoned:
                return
            run._timer = None
            self._abandon(run, RequestTimeoutError(self._request_timeout), effects)
            self._settle(run._worker, effects)
        _run_effects(effects)

    def _sweep_slices(self) -> None:
        """Timer, every busy_slice / 2 while tasks run: tasks that have run for busy_slice
        stop counting as busy (see module doc)."""
        effects: list[Effect] = []
        with self._lock:
            self._slice_sweep = None
            now = self._runtime.now()
            for worker in list(self._workers.values()):  # _settle may start workers
                used_up = [
                    run for run in worker.runs
                    if not (run.returned or run.abandoned or run.long_running)
                    and now - run.accepted_at >= self._busy_slice
                ]
                for run in used_up:
                    run.long_running = True
                    effects.append(partial(self._state.task_running_long, worker.store))
                if used_up:
                    self._settle(worker, effects)
            if self._running:
                self._slice_sweep = self._runtime.call_at(now + self._busy_slice / 2, self._sweep_slices)
        _run_effects(effects)

    def _on_idle_timeout(self, worker: WorkerRecord, generation: int) -> None:
        effects: list[Effect] = []
        with self._lock:
            if worker.phase is WorkerPhase.RUNNING and worker.idle_generation == generation and not worker.runs:
                worker.idle_timer = None
                self._begin_exit(worker, effects)
        _run_effects(effects)

    def _exit_job(self, worker: WorkerRecord, lane: Lane) -> None:
        """On a lane of the exiting worker: write the profile, release the store, report errors,
        free the slot."""
        error = worker.error
        steps: list[Effect] = []
        if worker.has_store:
            if worker.write_profile is not None:
                steps.append(worker.write_profile)
            steps.append(lambda: self._state.release(worker.store, worker.instance))
        for step in steps:
            try:
                step()
            except BaseException as exc:  # the slot must be freed whatever happens
                if error is None:
                    error = exc
                else:
                    log.exception("instance %d: disposing of the store failed", worker.worker_id)
        worker.store = worker.instance = worker.write_profile = None
        if error is not None:
            self._report(WorkerError(worker.worker_id, tuple(worker.req_ids), error))
        effects: list[Effect] = []
        with self._lock:
            lanes, worker.idle_lanes = worker.idle_lanes, []
            # A worker started for the queue now takes this thread over: no wake-up needed.
            handed_over = self._forget(worker, effects, lane)
        for idle_lane in lanes:
            idle_lane.release()
        if not handed_over:
            lane.release()  # after this job: the exit job is its last
        _run_effects(effects)

    def _report(self, error: WorkerError) -> None:
        try:
            self._state.handle_worker_error(error)
        except Exception:
            log.exception("handle_worker_error failed for %s", error)
