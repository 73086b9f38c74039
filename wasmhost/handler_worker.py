"""What the scheduling core (:mod:`wasmhost.handler`) records per task and per worker.

Plain records: every field is read and written by :class:`ProxyHandler` with
its lock held (see its module doc for the rules they implement).
"""
from __future__ import annotations

from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Any, Iterator

from .handler_api import Task, WriteProfile
from .handler_runtime import Lane, TimerHandle

if TYPE_CHECKING:
    from .handler import ProxyHandler


class TaskRun:
    """One task accepted by one worker; handed to ``HandlerState.run_task``."""

    __slots__ = (
        "task", "req_id", "worker_id", "accepted_at", "deadline", "is_waiting_on_io",
        "abandoned", "returned", "long_running", "_handler", "_worker", "_timer", "_lane",
    )

    def __init__(
        self, handler: "ProxyHandler", worker: "WorkerRecord", task: Task, req_id: int | None,
        accepted_at: float, deadline: float,
    ) -> None:
        self.task = task
        self.req_id = req_id
        self.worker_id = worker.worker_id
        self.accepted_at = accepted_at
        self.deadline = deadline
        self.is_waiting_on_io = False
        self.abandoned = False   # client side already failed; the result no longer matters
        self.returned = False    # run_task returned
        self._handler = handler
        self._worker = worker
        self._timer: TimerHandle | None = None
        self.long_running = False  # ran for busy_slice: no longer counts as busy
        self._lane: Lane | None = None

    @contextmanager
    def waiting_on_io(self) -> Iterator[None]:
        """While inside, the task waits on I/O: its worker may accept another task."""
        self._handler._set_waiting_on_io(self, True)
        try:
            yield
        finally:
            self._handler._set_waiting_on_io(self, False)


class WorkerPhase(Enum):
    STARTING = "starting"  # new_store + instantiate on its first lane
    RUNNING = "running"
    EXITING = "exiting"    # write_profile, release, error report; still a live instance


class WorkerRecord:
    __slots__ = (
        "worker_id", "phase", "store", "has_store", "instance", "write_profile", "runs", "live_runs",
        "executing", "accepted", "req_ids", "idle_lanes", "draining", "error",
        "interrupt_reason", "interrupted", "idle_timer", "idle_generation", "busy",
    )

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id
        self.phase = WorkerPhase.STARTING
        self.store: Any = None
        self.has_store = False             # new_store returned: write_profile and release it
        self.instance: Any = None
        self.write_profile: WriteProfile | None = None
        self.runs: set[TaskRun] = set()    # accepted, not yet returned
        self.live_runs = 0                 # ... of which not abandoned
        self.executing = 0                 # ... of which not waiting on I/O
        self.accepted = 0
        self.req_ids: list[int] = []
        self.idle_lanes: list[Lane] = []   # lanes with no job; all of them once runs is empty
        self.draining = False              # accepts nothing more
        self.error: BaseException | None = None  # first failure, reported at exit
        self.interrupt_reason = ""
        self.interrupted = False
        self.idle_timer: TimerHandle | None = None
        self.idle_generation = 0           # invalidates an idle timer already firing
        self.busy = True                   # counted in ProxyHandler._busy (see _update_busy)
