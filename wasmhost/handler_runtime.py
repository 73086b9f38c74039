"""Threads and timers for :mod:`wasmhost.handler`, behind a small protocol.

The scheduling core never starts a thread or sleeps itself; it asks a
:class:`HandlerRuntime` for *lanes* (sequential executors, one OS thread each)
and *timers*. :class:`ThreadRuntime` is the real implementation; tests plug in
a simulated runtime with a virtual clock to drive the core deterministically.

Lanes come from a pool of parked threads so that short-lived instances
(``max_instance_reuse_count = 1``) do not pay for a thread start per request.
Given an :class:`InlineExecutor` (an :class:`~wasmhost.inline_loop.InlineLoop`),
lanes run their jobs on the thread that drives the event loop instead
(:class:`InlineLane`): no thread hand-off per job.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
import queue
import threading
import time
from functools import partial
from typing import Callable, Protocol

log = logging.getLogger("wasmhost.handler")

Job = Callable[[], None]


class Lane(Protocol):
    """Runs submitted jobs one at a time, in order, on one thread."""

    def submit(self, job: Job) -> None:
        """Queue ``job``; never blocks and never runs it inline."""

    def release(self) -> None:
        """No more jobs will be submitted; the thread is freed after the queued ones."""


class InlineExecutor(Protocol):
    """Runs jobs on the thread driving an event loop (see :mod:`wasmhost.inline_loop`)."""

    def run_job(self, job: Job) -> None:
        """Run ``job`` on the driving thread, after the current iteration (any thread may call)."""

    def is_driving(self) -> bool:
        """Whether the calling thread drives the loop now."""


class TimerHandle(Protocol):
    def cancel(self) -> None:
        """The callback will not be called (unless it is already running)."""


class HandlerRuntime(Protocol):
    def now(self) -> float:
        """Monotonic time in seconds."""

    def call_at(self, when: float, callback: Job) -> TimerHandle:
        """Call ``callback`` (on some runtime thread) once ``now() >= when``."""

    def new_lane(self, name: str) -> Lane:
        """A lane for one worker; ``name`` names its thread."""

    def shutdown(self) -> None:
        """Stop the timer and the parked threads; lanes in use finish their jobs."""


class _Timer:
    """One scheduled callback; ordered by (when, seq) in the timer heap."""

    __slots__ = ("when", "seq", "callback", "cancelled", "_owner")

    def __init__(self, when: float, seq: int, callback: Job, owner: "_TimerThread") -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.cancelled = False
        self._owner = owner

    def __lt__(self, other: "_Timer") -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._owner.note_cancelled()


class _TimerThread:
    """A heap of timers served by one daemon thread, started on first use.

    Cancelled timers stay in the heap (lazy deletion) until the heap is mostly
    garbage, then it is rebuilt: request deadlines are usually cancelled long
    before they are due.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[_Timer] = []
        self._seq = itertools.count()
        self._cancelled = 0
        self._stopped = False
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, callback: Job) -> _Timer:
        with self._cond:
            timer = _Timer(when, next(self._seq), callback, self)
            if self._stopped:
                timer.cancelled = True
                return timer
            heapq.heappush(self._heap, timer)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wasmhost-timers", daemon=True)
                self._thread.start()
            elif self._heap[0] is timer:
                self._cond.notify()  # new earliest deadline: re-arm the wait
            return timer

    def note_cancelled(self) -> None:
        with self._cond:
            self._cancelled += 1
            if self._cancelled > 1024 and self._cancelled * 2 > len(self._heap):
                self._heap = [t for t in self._heap if not t.cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cancelled = 0
            self._cond.notify()

    def _run(self) -> None:
        heap = self._heap
        with self._cond:
            while not self._stopped:
                heap = self._heap  # note_cancelled may have rebuilt it
                if heap and heap[0].cancelled:
                    heapq.heappop(heap)
                    self._cancelled -= 1
                    continue
                if not heap:
                    self._cond.wait()
                    continue
                delay = heap[0].when - time.monotonic()
                if delay > 0:
                    # Waking early is harmless: the loop re-checks the clock.
                    self._cond.wait(min(delay, threading.TIMEOUT_MAX))
                    continue
                timer = heapq.heappop(heap)
                timer.cancelled = True  # a late cancel() must not count it as garbage
                self._cond.release()
                try:
                    timer.callback()
                except Exception:
                    log.exception("timer callback failed")
                finally:
                    self._cond.acquire()


# Queue items that are not jobs: give the thread back to the pool / end it.
_RELEASE = "release"
_STOP = "stop"


class _PooledThread:
    """A daemon thread that runs jobs from its own queue; parked in the pool between lanes."""

    __slots__ = ("jobs", "thread", "_runtime")

    def __init__(self, runtime: "ThreadRuntime", name: str) -> None:
        self.jobs: queue.SimpleQueue[Job | str] = queue.SimpleQueue()
        self._runtime = runtime
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def release(self) -> None:
        self.jobs.put(_RELEASE)

    def _run(self) -> None:
        runtime = self._runtime
        while True:
            try:
                item = self.jobs.get(timeout=runtime.idle_thread_timeout)
            except queue.Empty:
                if runtime._retire(self):
                    return
                continue  # leased again while timing out: jobs are on the way
            if item is _RELEASE:
                self._between_jobs(False)
                if not runtime._park(self):
                    return
            elif item is _STOP:
                self._between_jobs(False)
                return
            else:
                _run_job(item)  # type: ignore[arg-type]
                # A queued _RELEASE/_STOP counts as more work: it calls the hook itself.
                self._between_jobs(not self.jobs.empty())

    def _between_jobs(self, more_queued: bool) -> None:
        _call_between_jobs(self._runtime.between_jobs, more_queued)


def _run_job(job: Job) -> None:
    try:
        job()
    except BaseException:
        # Jobs handle their own errors; this only keeps the lane going.
        log.exception("worker job failed")


def _call_between_jobs(hook: Callable[[bool], None] | None, more_queued: bool) -> None:
    if hook is not None:
        try:
            hook(more_queued)
        except Exception:
            log.exception("between_jobs hook failed")


class InlineLane:
    """A lane whose jobs run on the thread driving an event loop, one at a time, in order.

    A job that hands the driving over (it had to block) finishes on its own
    thread; the lane's jobs submitted meanwhile run after it, on that thread,
    as on a thread lane.
    """

    __slots__ = ("_executor", "_between_jobs", "_lock", "_backlog", "_busy")

    def __init__(self, executor: InlineExecutor, between_jobs: Callable[[bool], None] | None) -> None:
        self._executor = executor
        self._between_jobs = between_jobs
        self._lock = threading.Lock()
        self._backlog: collections.deque[Job] = collections.deque()
        self._busy = False  # a job of this lane is queued or running

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._busy:
                self._backlog.append(job)
                return
            self._busy = True
        self._executor.run_job(partial(self._run, job))

    def release(self) -> None:
        """Nothing to free: the lane owns no thread."""

    def _run(self, job: Job) -> None:
        while True:
            _run_job(job)
            _call_between_jobs(self._between_jobs, False)
            with self._lock:
                if not self._backlog:
                    self._busy = False
                    return
                job = self._backlog.popleft()
            if self._executor.is_driving():
                # Back in line behind the loop's other jobs and its I/O.
                self._executor.run_job(partial(self._run, job))
                return


class ThreadRuntime:
    """Real threads (pooled) and one timer thread; the default runtime of ProxyHandler."""

    def __init__(
        self, idle_thread_timeout: float = 30.0, between_jobs: Callable[[bool], None] | None = None,
        inline: InlineExecutor | None = None,
    ) -> None:
        """``between_jobs(more_queued)`` runs on a lane's thread after each job, with whether
        another job is already queued (e.g. to deliver what the job left pending).
        With ``inline``, lanes run their jobs through it (:class:`InlineLane`)."""
        self.idle_thread_timeout = idle_thread_timeout
        self.between_jobs = between_jobs
        self.inline = inline
        self._timers = _TimerThread()
        self._pool_lock = threading.Lock()
        self._parked: list[_PooledThread] = []
        self._shut_down = False

    def now(self) -> float:
        return time.monotonic()

    def call_at(self, when: float, callback: Job) -> TimerHandle:
        return self._timers.call_at(when, callback)

    def new_lane(self, name: str) -> Lane:
        if self.inline is not None:
            return InlineLane(self.inline, self.between_jobs)
        with self._pool_lock:
            # Most recently parked first: it is warm, and the cold ones retire.
            pooled = self._parked.pop() if self._parked else None
        if pooled is not None:
            pooled.thread.name = name
            return pooled
        pooled = _PooledThread(self, name)
        pooled.thread.start()
        return pooled

    def shutdown(self) -> None:
        self._timers.stop()
        with self._pool_lock:
            self._shut_down = True
            parked, self._parked = self._parked, []
        for pooled in parked:
            pooled.jobs.put(_STOP)

    def _park(self, pooled: _PooledThread) -> bool:
        with self._pool_lock:
            if self._shut_down:
                return False
            self._parked.append(pooled)
            return True

    def _retire(self, pooled: _PooledThread) -> bool:
        """An idle parked thread may exit, unless it was leased meanwhile."""
        with self._pool_lock:
            if pooled in self._parked:
                self._parked.remove(pooled)
                return True
            return False
