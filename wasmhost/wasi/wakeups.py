"""Coalesced wake-ups of the event loop from a worker thread.

Every ``call_soon_threadsafe`` wakes the event loop, which then takes the GIL
while the worker still has host work to do: each wake-up costs a GIL round
trip. While a worker runs a request, the wake-ups it causes (the response
head is ready, body bytes are in the pipe, the body ended) are collected in
its :class:`WakeBatch` and delivered together when the worker is about to
block, when the request's guest call returns, or at the latest on the next
epoch tick (so a guest that computes after setting its response is not held
back for long).
"""
from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

_current = threading.local()


class WakeBatch:
    """Loop callbacks queued by one worker thread, delivered in one wake-up."""

    __slots__ = ("loop", "_pending", "_lock")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    def add(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        with self._lock:
            self._pending.append((fn, args))

    def flush(self) -> None:
        with self._lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, []
        try:
            self.loop.call_soon_threadsafe(_run_all, pending)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            return


def _run_all(pending: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    for fn, args in pending:
        fn(*args)


def call_soon_threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Like ``loop.call_soon_threadsafe``, but batched while the calling thread defers wake-ups."""
    batch: WakeBatch | None = getattr(_current, "batch", None)
    if batch is not None and batch.loop is loop:
        batch.add(fn, args)
    else:
        loop.call_soon_threadsafe(fn, *args)


@contextmanager
def deferred_wakeups(batch: WakeBatch | None) -> Iterator[None]:
    """Within this block, this thread's loop wake-ups go to ``batch``; flushed at the end."""
    if batch is None:
        yield
        return
    _current.batch = batch
    try:
        yield
    finally:
        _current.batch = None
        batch.flush()
