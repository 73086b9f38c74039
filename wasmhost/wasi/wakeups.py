"""Coalesced wake-ups of the event loop from a worker thread.

Every ``call_soon_threadsafe`` wakes the event loop, which then takes the GIL
while the worker still has host work to do: each wake-up costs a GIL round
trip. While a worker runs a request, the wake-ups it causes (the response
head is ready, body bytes are in the pipe, the body ended) are collected in
its :class:`WakeBatch` and delivered together when the worker is about to
block, when the request's guest call returns, or at the latest on the next
epoch tick (so a guest that computes after setting its response is not held
back for long).

A worker thread with more requests queued may also *hold* a finished
request's wake-ups (``deferred_wakeups(hold=True)``) until it runs out of
queued work or they are ``HOLD_LIMIT`` old (``release_held_wakeups`` between
jobs): each wake-up is a GIL hand-off to the loop, and under load several
responses then cost one.

On the thread running the loop itself (an :class:`~wasmhost.inline_loop.InlineLoop`
runs guest calls on the thread driving it) nothing needs waking: the
callbacks run at once. That thread calls :func:`leave_loop` before it blocks,
so that another thread drives the loop meanwhile.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

_current = threading.local()

# Seconds a worker thread may hold finished requests' wake-ups while it has
# more queued work: a few requests' worth, so responses are not held back for long.
HOLD_LIMIT = 0.001


class WakeBatch:
    """Loop callbacks queued by one worker thread, delivered in one wake-up."""

    __slots__ = ("loop", "_pending", "_lock", "_since")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self._since = 0.0  # when the oldest pending wake-up was added

    def add(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        with self._lock:
            if not self._pending:
                self._since = time.monotonic()
            self._pending.append((fn, args))

    def age(self) -> float:
        """Seconds the oldest pending wake-up has waited (0 when none is pending)."""
        return time.monotonic() - self._since if self._pending else 0.0

    def flush(self) -> None:
        with self._lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, []
        try:
            _call_soon(self.loop, _run_all, (pending,))
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            return


def _run_all(pending: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    for fn, args in pending:
        fn(*args)


def call_soon_threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Like ``loop.call_soon_threadsafe``, but batched while the calling thread defers wake-ups,
    and run at once on the loop's own thread (``fn`` must only resolve futures)."""
    batch: WakeBatch | None = getattr(_current, "batch", None)
    if batch is not None and batch.loop is loop:
        batch.add(fn, args)
    else:
        _call_soon(loop, fn, args)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    # On the thread running the loop (an InlineLoop's driver runs guest jobs
    # there, between iterations) there is nobody to wake: the callbacks given
    # here only resolve futures, so they run at once.
    if threading.get_ident() == getattr(loop, "_thread_id", None):
        fn(*args)
    else:
        loop.call_soon_threadsafe(fn, *args)


class deferred_wakeups:
    """``with deferred_wakeups(batch):`` this thread's loop wake-ups go to ``batch``; flushed
    at the end, or with ``hold`` left for this thread's next ``release_held_wakeups``.

    A class rather than a generator context manager: it is entered for every request.
    """

    __slots__ = ("batch", "hold")

    def __init__(self, batch: WakeBatch | None, hold: bool = False) -> None:
        self.batch = batch
        self.hold = hold

    def __enter__(self) -> None:
        if self.batch is not None:
            _current.batch = self.batch

    def __exit__(self, *exc_info: object) -> None:
        batch = self.batch
        if batch is None:
            return
        _current.batch = None
        if not self.hold:
            batch.flush()
            return
        held: WakeBatch | None = getattr(_current, "held", None)
        if held is not None and held is not batch:
            held.flush()
        _current.held = batch


def release_held_wakeups(more_work_queued: bool = False) -> None:
    """Between two jobs of a worker thread: deliver the wake-ups it holds, unless
    more work is queued and they have waited less than ``HOLD_LIMIT``."""
    held: WakeBatch | None = getattr(_current, "held", None)
    if held is None or (more_work_queued and held.age() < HOLD_LIMIT):
        return
    _current.held = None
    held.flush()


def set_hand_off(hand_off: Callable[[], None] | None) -> None:
    """Register what :func:`leave_loop` calls on this thread (an InlineLoop's driver threads)."""
    _current.hand_off = hand_off


def leave_loop() -> None:
    """This thread is about to block or to run long: if it drives an event loop
    (see :mod:`wasmhost.inline_loop`), another thread takes the driving over first."""
    hand_off: Callable[[], None] | None = getattr(_current, "hand_off", None)
    if hand_off is not None:
        hand_off()


def before_waiting() -> None:
    """This thread is about to wait or to run long: deliver the wake-ups it holds
    back, then hand over the event loop it drives (if any)."""
    release_held_wakeups()
    leave_loop()
