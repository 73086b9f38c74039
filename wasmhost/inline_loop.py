"""An event loop that runs guest jobs on the thread driving it.

One Python process runs Python on one core at a time (the GIL), and a short
guest call (the ``hello`` guest's ~200 us) holds the GIL for all of its host
calls anyway. Handing each such request from the loop thread to a worker
thread and its response back costs more than the call: thread wake-ups, GIL
hand-offs, self-pipe writes. :class:`InlineLoop` instead runs *lane jobs*
(:class:`InlineLane`, see :mod:`wasmhost.handler_runtime`) itself, between two
iterations of the loop, on whichever thread drives it.

A job must not block the loop, though: a guest waiting for its request body,
an outgoing response or a timer waits for things the loop does, and one
waiting for a CPU slot waits for other guests. Before it blocks, or once it has run for a while (an instantiation, a guest
call past its GIL hold), the job *hands the driving over*
(:func:`wasmhost.wasi.wakeups.leave_loop`): a standby thread takes the loop
over at once and runs its iterations and jobs, while the job carries on where
it is, as on any worker thread. The job's thread becomes a standby thread
when the job is done.

Only one thread drives at a time, and the driving changes hands only between
iterations (a job runs outside any iteration), so asyncio still sees a
single-threaded loop. The thread that called ``run_forever`` (usually the main
thread) only waits: it never runs a job that could keep it from returning
when the loop stops, and it runs what must run on the main thread (signal
handler set-up) for the drivers.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
from asyncio import events
from typing import TYPE_CHECKING, Any, Callable

from .wasi.wakeups import set_hand_off

log = logging.getLogger("wasmhost")

if TYPE_CHECKING:  # Python 3.11+ has both in typing; annotations only here
    from typing_extensions import TypeVarTuple, Unpack

    _Ts = TypeVarTuple("_Ts")

Job = Callable[[], None]

# asyncio's ``_thread_id`` while nobody drives: not None (the loop is running),
# and no thread's ident.
_NO_THREAD = 0


class InlineLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose iterations and lane jobs run on driver threads.

    ``idle_thread_timeout``: seconds a standby thread waits for the driving
    before it exits (one always stays while the loop is open).
    """

    if TYPE_CHECKING:
        # asyncio internals this loop builds on; typeshed does not declare them.
        def _write_to_self(self) -> None: ...
        def _asyncgen_firstiter_hook(self, agen: Any) -> None: ...
        def _asyncgen_finalizer_hook(self, agen: Any) -> None: ...

    def __init__(self, idle_thread_timeout: float = 30.0) -> None:
        super().__init__()
        self.idle_thread_timeout = idle_thread_timeout
        self._jobs: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._driver: int | None = None  # the thread allowed to run iterations and jobs
        self._wanted = False  # the driving was handed over and nobody has taken it yet
        self._idle_standby = 0
        self._threads = 0
        self._session_done = True
        self._session_error: BaseException | None = None
        self._main_calls: collections.deque[_MainCall] = collections.deque()
        self._home: int | None = None
        self._closing = False

    # -- jobs -------------------------------------------------------------------------
    def run_job(self, job: Job) -> None:
        """Run ``job`` on the driving thread after the current iteration (any thread may call)."""
        self._jobs.append(job)
        if threading.get_ident() != self._driver:
            self._write_to_self()  # the driver may be asleep in select()

    def is_driving(self) -> bool:
        """Whether the calling thread drives this loop now."""
        return threading.get_ident() == self._driver

    def _run_jobs(self, me: int) -> None:
        """The jobs queued so far (later ones wait for the next iteration, so I/O is not starved)."""
        jobs = self._jobs
        for _ in range(len(jobs)):
            if self._driver != me:
                return
            job = jobs.popleft()
            try:
                job()
            except BaseException:
                # Jobs handle their own errors; this only keeps the loop going.
                log.exception("inline job failed")
        if jobs:
            self.call_soon(_no_op)  # the next iteration must not sleep in select() meanwhile

    # -- handing over -----------------------------------------------------------------
    def _hand_off(self) -> None:
        """On the driving thread, before it blocks or runs long: a standby thread takes over."""
        me = threading.get_ident()
        with self._cond:
            if self._driver != me:
                return
            self._driver = None
            self._thread_id = _NO_THREAD  # this thread's loop callbacks must wake the next driver
            self._wanted = True
            self._wake_standby()

    def _wake_standby(self) -> None:
        # With _cond held.
        if self._idle_standby:
            self._cond.notify_all()
        else:
            self._threads += 1
            threading.Thread(target=self._standby, name="wasmhost-loop", daemon=True).start()

    def _standby(self) -> None:
        """A thread that drives the loop whenever the driving is handed over."""
        me = threading.get_ident()
        events._set_running_loop(self)
        sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook, finalizer=self._asyncgen_finalizer_hook)
        set_hand_off(self._hand_off)
        try:
            while True:
                with self._cond:
                    self._idle_standby += 1
                    try:
                        while not (self._wanted and self._driver is None) and not self._closing:
                            if not self._cond.wait(self.idle_thread_timeout) and not self._wanted and self._threads > 1:
                                self._threads -= 1
                                return
                    finally:
                        self._idle_standby -= 1
                    if self._closing:
                        self._threads -= 1
                        return
                    self._wanted = False
                    self._driver = me
                    self._thread_id = me  # asyncio's debug checks compare against it
                self._drive(me)
        finally:
            set_hand_off(None)
            events._set_running_loop(None)

    def _drive(self, me: int) -> None:
        """Iterations and jobs until the driving goes elsewhere or the loop stops."""
        while True:
            self._run_jobs(me)  # what the previous driver left, then this iteration's
            if self._driver != me:
                return  # a job handed the driving over; it finished on this thread
            try:
                super()._run_once()  # type: ignore[misc]  # asyncio's iteration, not in typeshed
            except BaseException as exc:  # e.g. GracefulExit from a signal handler
                self._end_session(exc)
                return
            if self._stopping:
                self._run_jobs(me)
                if self._driver == me:
                    self._end_session(None)
                return

    def _end_session(self, error: BaseException | None) -> None:
        with self._cond:
            self._driver = None
            self._thread_id = _NO_THREAD
            self._session_done = True
            self._session_error = error
            self._cond.notify_all()

    # -- the home thread ----------------------------------------------------------------
    def _run_once(self) -> None:
        """Called by ``run_forever`` on the home thread: let driver threads iterate
        until the loop is stopped (or an iteration raises)."""
        with self._cond:
            self._home = threading.get_ident()
            self._session_done = False
            self._session_error = None
            self._wanted = True
            self._thread_id = _NO_THREAD
            self._wake_standby()
            try:
                self._wait_for_session()
            except BaseException:
                # E.g. KeyboardInterrupt raised here by Python's default SIGINT
                # handler: stop the drivers before run_forever reports the loop stopped.
                self._stopping = True
                self._write_to_self()
                while not self._session_done:
                    self._cond.wait()
                raise
            finally:
                self._thread_id = self._home
            error, self._session_error = self._session_error, None
        if error is not None:
            raise error

    def _wait_for_session(self) -> None:
        # With _cond held.
        while not self._session_done:
            while self._main_calls:
                call = self._main_calls.popleft()
                self._cond.release()
                try:
                    call.run()
                finally:
                    self._cond.acquire()
            if not self._session_done:
                self._cond.wait()

    def _on_home_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the thread that waits in run_forever (signal set-up must run there)."""
        with self._cond:
            if self._session_done or threading.get_ident() == self._home:
                home_waits = False
            else:
                home_waits = True
                call = _MainCall(fn, args)
                self._main_calls.append(call)
                self._cond.notify_all()
        if not home_waits:
            return fn(*args)
        return call.result()

    def add_signal_handler(self, sig: int, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> None:
        self._on_home_thread(super().add_signal_handler, sig, callback, *args)

    def remove_signal_handler(self, sig: int) -> bool:
        return bool(self._on_home_thread(super().remove_signal_handler, sig))

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        super().close()


def _no_op() -> None:
    """A ready callback, so that an iteration polls without waiting."""


class _MainCall:
    """A call a driver thread needs made on the home thread, and its outcome."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self.fn(*self.args)
        except BaseException as exc:
            self._error = exc
        self._done.set()

    def result(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value
