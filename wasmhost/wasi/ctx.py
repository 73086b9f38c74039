"""Per-store WASI state: what every host function receives first.

One :class:`WasiCtx` lives as long as its Store (one component instance), so
with instance reuse it serves many requests; request-scoped values
(``request_id``) are updated by the worker for each task.
"""
from __future__ import annotations

import asyncio
import os
import queue
import random
import select
import stat
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

from .interface import Trap
from .wakeups import WakeBatch, before_waiting, leave_loop


@dataclass(frozen=True)
class WasiConfig:
    """What the server settings decide for every store (immutable, shared)."""

    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ("wasmhost",)
    # "host" or "host:port" entries a guest may send outgoing requests to.
    allowed_outgoing: frozenset[str] = frozenset()
    logging_prefix: bool = True
    # Largest chunk a single stream read returns / check-write permits.
    max_chunk: int = 64 * 1024
    # Bound on the bytes buffered in one body pipe.
    pipe_capacity: int = 256 * 1024


class GuestInterrupted(Trap):
    """The store was interrupted (request timeout, shutdown) while blocked in a host call."""


class GuestExit(Trap):
    """The guest called ``wasi:cli/exit.exit``."""

    def __init__(self, code: int) -> None:
        super().__init__(f"guest exited with status {code}")
        self.code = code


class CpuSlots:
    """``count`` tokens: how many stores may execute guest code at once.

    A queue of tokens rather than ``threading.Semaphore``: its get/put are
    single C calls, taken twice per request. Callers release only what they
    acquired (``WasiCtx.holds_cpu_slot``), so it needs no bound check.
    """

    def __init__(self, count: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(count):
            self._tokens.put(None)

    def acquire(self, timeout: float) -> bool:
        try:
            self._tokens.get(timeout=timeout)
        except queue.Empty:
            return False
        return True

    def release(self) -> None:
        self._tokens.put(None)


class LineSink:
    """Guest stdout/stderr: whole lines to ``out``, each prefixed ``stdout [REQ_ID] :: ``.

    Partial lines are held until their newline (or ``flush``), like
    ``wasmtime serve`` does, so output of concurrent requests does not interleave
    mid-line.
    """

    def __init__(self, name: str, ctx: "WasiCtx", out: BinaryIO | None = None) -> None:
        self.name = name
        self.ctx = ctx
        self.out = out if out is not None else getattr(sys, name).buffer
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._ready = _write_readiness(self.out)

    def _prefix(self) -> bytes:
        if not self.ctx.config.logging_prefix:
            return b""
        return f"{self.name} [{self.ctx.request_id}] :: ".encode()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._pending += data
            if b"\n" not in data:
                return
            head, sep, rest = bytes(self._pending).rpartition(b"\n")
            self._pending = bytearray(rest)
            prefix = self._prefix()
            lines = head.split(b"\n")
            self._emit(b"".join(prefix + line + b"\n" for line in lines))

    def flush(self) -> None:
        if not self._pending:
            return  # write() already flushed every complete line
        with self._lock:
            if self._pending:
                self._emit(self._prefix() + bytes(self._pending) + b"\n")
                self._pending.clear()
            else:
                self.out.flush()

    def _emit(self, data: bytes) -> None:
        """Write and flush, with the lock held. The server's own stdout may be a pipe
        nobody drains: if the write could block, the event loop this thread may be
        driving (InlineLoop) goes to another thread first, so only this guest waits."""
        ready = self._ready
        if ready is not None and not ready(len(data)):
            before_waiting()
        self.out.write(data)
        self.out.flush()


def _write_readiness(out: BinaryIO) -> Callable[[int], bool] | None:
    """For ``out`` backed by a pipe, socket or terminal: a check that writing ``n``
    bytes now cannot block. None where writes never wait for a reader (regular
    files, in-memory buffers)."""
    try:
        fd = out.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return None
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return None
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    atomic = getattr(select, "PIPE_BUF", 512)

    def ready(n: int) -> bool:
        # A pipe reports POLLOUT with at least PIPE_BUF bytes free; a larger
        # write may wait for the reader part-way through.
        return n <= atomic and any(events & select.POLLOUT for _, events in poller.poll(0))

    return ready


class WasiCtx:
    """State shared by all WASI host functions of one store."""

    def __init__(
        self,
        config: WasiConfig,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        http_client: Any = None,
        stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
    ) -> None:
        self.config = config
        # The event loop that owns the HTTP side (pipes, outgoing requests).
        self.loop = loop
        # An aiohttp ClientSession for wasi:http/outgoing-handler (owned by the server).
        self.http_client = http_client
        # Every blocking wait of this store waits on this condition; every
        # source of readiness (pipes, outgoing responses, interruption) notifies it.
        self.cond = threading.Condition()
        # How many threads wait on ``cond`` (changed with it held): lets
        # ``notify`` skip the condition while nobody waits, e.g. when the
        # worker's own body writes change a pipe it is not waiting on.
        self._waiters = 0
        self.interrupted: str | None = None
        # Called (under ``cond``) with the reason when the store is interrupted:
        # the engine uses it to stop wasm that is running rather than blocked.
        self.on_interrupt: Callable[[str], None] | None = None
        # Called (in the host call) after block_until had to wait: the compiled
        # binding then holds the GIL again for the guest code that follows.
        self.after_wait: Callable[[], None] | None = None
        # The Trap a host function raised last (e.g. GuestExit), so the worker
        # can tell `exit(0)` from a failure after wasmtime reports the trap.
        self.last_trap: Trap | None = None
        self.request_id: int = 0
        # The handler's TaskRun of the request being served: blocking waits are
        # reported through it so the worker may take another task meanwhile.
        self.task_run: Any = None
        # Bounds how many stores run wasm or host code at once (shared by all
        # stores of a server); a store gives its slot up while it blocks.
        self.cpu_slots: CpuSlots | None = None
        self.holds_cpu_slot = False
        # Set (from another thread) once the request has run long: it gives its
        # slot up for good, so long requests cannot keep short ones waiting.
        self.long_running = False
        self._slot_lock = threading.Lock()
        # Loop wake-ups this store's requests cause, delivered together.
        self.wake_batch = WakeBatch(loop) if loop is not None else None
        self.stdout = LineSink("stdout", self, stdout)
        self.stderr = LineSink("stderr", self, stderr)
        self.insecure_random = random.Random(os.urandom(16))
        self.insecure_seed: tuple[int, int] = (
            int.from_bytes(os.urandom(8), "little"),
            int.from_bytes(os.urandom(8), "little"),
        )
        # Host-side values keyed by name for interfaces that need per-store
        # state of their own (kept here so no module holds mutable state).
        self.extras: dict[str, Any] = {}

    # -- blocking -----------------------------------------------------------
    def interrupt(self, reason: str) -> None:
        """Wake every blocked host call of this store and make it trap."""
        with self.cond:
            self.interrupted = reason
            if self.on_interrupt is not None:
                self.on_interrupt(reason)
            self.cond.notify_all()

    def check_interrupted(self) -> None:
        if self.interrupted is not None:
            raise GuestInterrupted(self.interrupted)

    def notify(self) -> None:
        """Something this store may be waiting for changed state (call after the change)."""
        # No lost wake-up without the condition: ``_wait`` counts itself in
        # before its last ``ready()`` check, so if we read 0 here that check
        # comes after the change and sees it.
        if not self._waiters:
            return
        with self.cond:
            self.cond.notify_all()

    def block_until(self, ready: Callable[[], bool], deadline_ns: int | None = None) -> bool:
        """Block the worker thread until ``ready()`` or ``deadline_ns`` (monotonic ns).

        Returns the final value of ``ready()``. Raises :class:`GuestInterrupted`
        when the store is interrupted meanwhile. ``ready`` must not block; the
        first check runs without the condition (nothing needs it when no wait
        follows), the ones while waiting with the condition held.
        """
        # Fast path: most calls find the stream or future ready at once.
        if self.interrupted is not None:
            raise GuestInterrupted(self.interrupted)
        if ready():
            return True
        if self.wake_batch is not None:
            self.wake_batch.flush()  # whoever we wait for may need what we queued
        leave_loop()  # what we wait for may need the event loop this thread drives
        run = self.task_run
        held = self.holds_cpu_slot
        self.release_cpu_slot()  # a blocked store lets another one execute
        try:
            if run is None:
                return self._wait(ready, deadline_ns)
            with run.waiting_on_io():
                return self._wait(ready, deadline_ns)
        finally:
            if held:
                self.acquire_cpu_slot()
            after_wait = self.after_wait
            if after_wait is not None:
                after_wait()

    def acquire_cpu_slot(self) -> None:
        """Wait for a CPU slot (if slots are bounded); give up once interrupted.

        An interrupted store goes on without a slot: its guest traps at the
        next epoch check or host call, so it runs for a moment at most.
        """
        slots = self.cpu_slots
        if slots is None or self.long_running:
            return
        if not slots.acquire(timeout=0):
            before_waiting()
            while not slots.acquire(timeout=0.05):
                if self.interrupted is not None or self.long_running:
                    return
        with self._slot_lock:
            if self.long_running:  # given up while we waited for it
                slots.release()
            else:
                self.holds_cpu_slot = True

    def release_cpu_slot(self) -> None:
        with self._slot_lock:
            self._release_slot_locked()

    def give_up_cpu_slot(self) -> None:
        """The running request has run long: it goes on without a slot (any thread)."""
        with self._slot_lock:  # one step, so acquire_cpu_slot sees both or neither
            self.long_running = True
            self._release_slot_locked()

    def _release_slot_locked(self) -> None:
        if self.holds_cpu_slot and self.cpu_slots is not None:
            self.holds_cpu_slot = False
            self.cpu_slots.release()

    def _wait(self, ready: Callable[[], bool], deadline_ns: int | None) -> bool:
        with self.cond:
            self._waiters += 1  # before the checks below: see notify()
            try:
                while True:
                    self.check_interrupted()
                    if ready():
                        return True
                    if deadline_ns is None:
                        self.cond.wait()
                        continue
                    left = deadline_ns - time.monotonic_ns()
                    if left <= 0:
                        return ready()
                    self.cond.wait(min(left / 1e9, threading.TIMEOUT_MAX))
            finally:
                self._waiters -= 1

    def close(self) -> None:
        self.stdout.flush()
        self.stderr.flush()
