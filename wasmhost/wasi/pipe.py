"""A bounded byte pipe between the asyncio event loop and a worker thread.

Guests run on worker threads (wasm releases the GIL) while aiohttp runs on the
event loop. Every body crosses that boundary through a :class:`Pipe`:

* loop -> worker: an incoming request body, an outgoing request's response
  body. The loop side ``await feed(data)`` (waits while the pipe is full) and
  ends with ``finish()`` or ``fail(error)``; the worker side reads without
  blocking (``read``) and waits through its store's condition.
* worker -> loop: a response body, an outgoing request body. The worker side
  asks ``capacity()`` and ``write``s at most that much, then ``finish()``; the
  loop side ``await drain()`` chunks until ``None`` (end), and calls
  ``abort(reason)`` when nobody will read any more (client gone): the writer
  then finds the pipe *closed*, as wasmtime's body streams report ``closed``
  once hyper dropped the receiving end, while ``fail(error)`` breaks it for both.

The worker side never blocks inside the pipe: it checks readiness with
``readable()``/``writable()`` and blocks, when it must, in
``WasiCtx.block_until``; every state change here calls ``waker`` (set to the
reading/writing store's ``WasiCtx.notify`` once a worker takes the pipe on)
after releasing the pipe's own lock, so a waiter holding the store's condition
never misses it. The loop side is woken through ``call_soon_threadsafe``.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Callable

from .wakeups import call_soon_threadsafe


class PipeClosed(Exception):
    """The pipe ended normally (reader side: end of data)."""


class PipeFailed(Exception):
    """The pipe broke: the other side failed or went away. ``args[0]`` says why."""


class Pipe:
    __slots__ = (
        "_loop", "_lock", "waker", "_chunks", "_buffered", "capacity_limit", "_ended",
        "_error", "_reader_gone", "_loop_waiter",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        capacity: int = 64 * 1024,
        waker: Callable[[], None] | None = None,
    ) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        # Wakes the worker store blocked on this pipe (WasiCtx.notify).
        self.waker = waker
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self.capacity_limit = capacity
        self._ended = False          # writer called finish()
        self._error: BaseException | None = None
        self._reader_gone: BaseException | None = None  # why nobody reads any more (abort)
        self._loop_waiter: asyncio.Future[None] | None = None

    # -- shared helpers -------------------------------------------------
    def _changed(self) -> None:
        """Called with the lock held: wake a coroutine waiting on this pipe."""
        waiter = self._loop_waiter
        if waiter is not None:
            self._loop_waiter = None
            call_soon_threadsafe(self._loop, _resolve, waiter)

    def _wake_worker(self) -> None:
        """Called after releasing the lock: wake a worker waiting on this pipe."""
        waker = self.waker
        if waker is not None:
            waker()

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def ended(self) -> bool:
        return self._ended

    # -- writer side (either thread) --------------------------------------
    def capacity(self) -> int:
        """How many bytes may be written now without exceeding the bound."""
        with self._lock:
            if self._error is not None:
                raise PipeFailed(self._error)
            if self._ended or self._reader_gone is not None:
                raise PipeClosed()
            return max(0, self.capacity_limit - self._buffered)

    def writable(self) -> bool:
        with self._lock:
            return (
                self._error is not None or self._ended or self._reader_gone is not None
                or self._buffered < self.capacity_limit
            )

    def write(self, data: bytes) -> None:
        """Append ``data`` without waiting; callers respect ``capacity()``."""
        if not data:
            return
        with self._lock:
            if self._error is not None:
                raise PipeFailed(self._error)
            if self._ended or self._reader_gone is not None:
                raise PipeClosed()
            self._chunks.append(bytes(data))
            self._buffered += len(data)
            self._changed()
        self._wake_worker()

    def write_if_room(self, data: bytes) -> bool:
        """Writer side, fast path: append all of ``data`` if the pipe is open and
        ``capacity()`` would permit it (one lock round instead of several); else
        write nothing and return False, leaving errors to ``capacity``/``write``."""
        with self._lock:
            if (
                self._error is not None or self._ended or self._reader_gone is not None
                or len(data) > self.capacity_limit - self._buffered
            ):
                return False
            if not data:
                return True
            self._chunks.append(bytes(data))
            self._buffered += len(data)
            self._changed()
        self._wake_worker()
        return True

    def open_below_bound(self) -> bool:
        """Writer side: neither ended nor failed (``capacity()`` would not raise) and below the bound."""
        with self._lock:
            return (
                self._error is None and not self._ended and self._reader_gone is None
                and self._buffered < self.capacity_limit
            )

    async def feed(self, data: bytes) -> None:
        """Loop side: write ``data``, waiting while the pipe is over its bound."""
        while True:
            with self._lock:
                if self._error is not None:
                    raise PipeFailed(self._error)
                if self._reader_gone is not None:
                    raise PipeFailed(self._reader_gone)
                if self._buffered < self.capacity_limit:
                    break
                waiter = self._new_loop_waiter()
            await waiter
        self.write(data)

    def finish(self) -> None:
        """Writer side: no more data."""
        with self._lock:
            self._ended = True
            self._changed()
        self._wake_worker()

    def fail(self, error: BaseException) -> None:
        """Either side: the pipe is broken; both sides see ``PipeFailed``."""
        with self._lock:
            if self._error is None and not (self._ended and not self._chunks):
                self._error = error
            self._changed()
        self._wake_worker()

    def abort(self, reason: BaseException) -> None:
        """Reader side: nothing more will be read. What is buffered is dropped; the
        writer sees the pipe closed (``PipeClosed``), the reader ``PipeFailed(reason)``."""
        with self._lock:
            if self._reader_gone is None:
                self._reader_gone = reason
            self._chunks.clear()
            self._buffered = 0
            self._changed()
        self._wake_worker()

    def flushed(self) -> bool:
        """Writer side: everything written has been taken by the reader (or never will be)."""
        with self._lock:
            return self._buffered == 0 or self._error is not None

    # -- reader side ------------------------------------------------------
    def exhausted(self) -> bool:
        """The reader has seen everything: the pipe ended and is empty, or it failed."""
        with self._lock:
            return self._error is not None or self._reader_gone is not None or (self._ended and self._buffered == 0)

    def readable(self) -> bool:
        """True when ``read`` would return data or raise (end or failure)."""
        with self._lock:
            return bool(self._chunks) or self._ended or self._error is not None or self._reader_gone is not None

    def read(self, limit: int) -> bytes:
        """Take up to ``limit`` buffered bytes without waiting (may be ``b""``).

        Raises ``PipeClosed`` at the end of data, ``PipeFailed`` when broken.
        """
        with self._lock:
            if not self._chunks:
                if self._error is not None or self._reader_gone is not None:
                    raise PipeFailed(self._error or self._reader_gone)
                if self._ended:
                    raise PipeClosed()
                return b""
            out = self._take(limit)
            self._changed()
        self._wake_worker()
        return out

    def _take(self, limit: int) -> bytes:
        if limit <= 0:
            return b""
        parts: list[bytes] = []
        need = limit
        while self._chunks and need > 0:
            head = self._chunks[0]
            if len(head) <= need:
                parts.append(self._chunks.popleft())
                need -= len(head)
            else:
                parts.append(head[:need])
                self._chunks[0] = head[need:]
                need = 0
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self._buffered -= len(out)
        return out

    async def drain(self, limit: int = 1 << 20) -> bytes | None:
        """Loop side: the next chunk (up to ``limit`` bytes), or ``None`` at the end."""
        while True:
            with self._lock:
                if self._chunks:
                    out = self._take(limit)
                    self._changed()
                    break
                if self._error is not None or self._reader_gone is not None:
                    raise PipeFailed(self._error or self._reader_gone)
                if self._ended:
                    return None
                waiter = self._new_loop_waiter()
            await waiter
        self._wake_worker()
        return out

    def take_complete(self) -> bytes | None:
        """Loop side: everything, if the writer already finished without error; else None.

        Lets the server send a body that is complete by the time the head is
        ready in one write instead of streaming it chunk by chunk.
        """
        with self._lock:
            if not self._ended or self._error is not None or self._reader_gone is not None:
                return None
            out = self._take(self._buffered)
            self._changed()
        self._wake_worker()
        return out

    def _new_loop_waiter(self) -> asyncio.Future[None]:
        waiter = self._loop_waiter
        if waiter is None or waiter.done():
            waiter = self._loop.create_future()
            self._loop_waiter = waiter
        return waiter


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
