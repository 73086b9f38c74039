"""The contract between :mod:`wasmhost.handler` and the server: what the server
implements (:class:`HandlerState`, :class:`Task`) and what the core reports
(errors, :class:`HandlerStats`). See :mod:`wasmhost.handler` for the rules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from .handler import TaskRun

WriteProfile = Callable[[], None]


class Task(Protocol):
    """A request to run; opaque to the core apart from failing it."""

    def fail(self, error: BaseException) -> None:
        """Complete the client side with ``error`` (unless it already completed).

        Called at most once per task, from any thread, when the core will not
        wait for the task any more: it timed out, its instance trapped or could
        not be created, or the handler closed. Must not block. A task that
        returns normally from ``run_task`` completes its client side itself.
        """


class HandlerState(Protocol):
    """What the server provides to the core. Settings are read once, in ``ProxyHandler()``."""

    @property
    def request_timeout(self) -> float:
        """Seconds a task may run before it is abandoned (see module doc); may be ``inf``."""

    @property
    def idle_instance_timeout(self) -> float:
        """Seconds an instance without tasks is kept for reuse; 0 = never idle, ``inf`` = forever."""

    @property
    def max_instance_reuse_count(self) -> int:
        """Tasks one instance serves in total (>= 1)."""

    @property
    def max_instance_concurrent_reuse_count(self) -> int:
        """Tasks one instance runs at once (>= 1; 1 for wasi 0.2 guests)."""

    @property
    def max_instances(self) -> int | None:
        """Live instances at most (tasks beyond wait in the queue); ``None`` = unbounded."""

    @property
    def max_busy_instances(self) -> int | None:
        """Start no new instance while this many are busy (starting, or running a task
        that is not waiting on I/O); tasks wait in the queue for one of them instead.
        ``None`` = start one whenever none is available, as the reference does."""

    @property
    def busy_slice(self) -> float:
        """Seconds after which a running task stops counting as busy (``inf`` = never);
        the handler notices within another half of it."""

    def new_store(self, req_id: int | None) -> tuple[Any, WriteProfile | None]:
        """A new store and an optional callback writing its profile (called once at worker exit).

        ``req_id`` is that of the first task the worker will run. Runs on the worker's thread.
        """

    def instantiate(self, store: Any, instance_pre: Any) -> Any:
        """Instantiate ``instance_pre`` in ``store``; the result goes to ``run_task``."""

    def run_task(self, store: Any, instance: Any, task: Any, run: "TaskRun") -> None:
        """Run ``task`` (as given to ``spawn``) on the calling worker thread; raise if the guest traps.

        Wrap blocking waits in ``run.waiting_on_io()``. With concurrent reuse > 1 it is
        called from several threads for one store (only while the others wait on I/O);
        the engine serialises access to the store.
        """

    def task_running_long(self, store: Any) -> None:
        """A task of ``store`` has run for ``busy_slice``: it no longer counts as busy.

        Called on the handler's timer thread, while the task may be running."""

    def interrupt(self, store: Any, reason: str) -> None:
        """Make every task running in ``store`` trap soon (epoch deadline, wake blocked
        host calls). Called once per store, from another thread; must not block."""

    def release(self, store: Any, instance: Any | None) -> None:
        """The worker is gone: free ``store`` and ``instance`` (``None`` if instantiation
        failed). Called once per store, on the worker's thread, after ``write_profile``."""

    def handle_worker_error(self, error: "WorkerError") -> None:
        """A worker ended abnormally (timeout, trap, instantiation, profile or release failure)."""


class RequestTimeoutError(Exception):
    def __init__(self, timeout: float) -> None:
        super().__init__(f"guest timed out after {timeout:g} s")
        self.timeout = timeout


class InstantiationError(Exception):
    """A new worker could not create its store or instantiate the component."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"instantiation failed: {error}")
        self.error = error
        self.__cause__ = error


class InstanceTrappedError(Exception):
    """Another task of the same instance trapped, which ends this one too."""


class HandlerClosedError(Exception):
    """The handler is shutting down."""


class WorkerError(Exception):
    """Passed to ``HandlerState.handle_worker_error``: which instance failed, serving which requests."""

    def __init__(self, worker_id: int, req_ids: tuple[int, ...], error: BaseException) -> None:
        super().__init__(f"instance {worker_id} (requests {list(req_ids)}) failed: {error}")
        self.worker_id = worker_id
        self.req_ids = req_ids
        self.error = error
        self.__cause__ = error


@dataclass(frozen=True)
class HandlerStats:
    live_workers: int         # started and not yet exited (bounded by max_instances)
    available_workers: int    # could accept a task right now
    queued_tasks: int
    running_tasks: int        # accepted and not yet returned from run_task
    workers_started: int
    tasks_accepted: int
    busy_workers: int         # starting, or running a task not waiting on I/O
