"""Glue between the server, the scheduling core and the engine.

:class:`Runtime` is what one served component needs at run time: the
compiled engine, the :class:`~wasmhost.handler.ProxyHandler` and its
:class:`EngineState` (the ``HandlerState`` backed by wasmtime), and the
request-to-task conversion (:class:`HttpTask`).
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
from importlib import resources
from typing import Any, Callable

from .engine import EngineOptions, GuestInstance, GuestTrap, WasmEngine, default_cache_dir
from .handler import ProxyHandler, RequestTimeoutError, TaskRun, WorkerError
from .handler_runtime import ThreadRuntime
from .inline_loop import InlineLoop
from .profile import guest_profiler
from .settings import Settings
from .wasi.ctx import CpuSlots, GuestExit, WasiConfig, WasiCtx
from .wasi.http_exchange import HttpExchange
from .wasi.wakeups import before_waiting, deferred_wakeups, release_held_wakeups

log = logging.getLogger("wasmhost")

# Seconds a request may run guest code before it stops counting as busy (see
# EngineState): far above a typical request, short enough that a few long
# ones delay the others only briefly.
BUSY_SLICE = 0.1

# Seconds guests get at shutdown, after their requests were cut off, to return by themselves.
SHUTDOWN_GRACE = 1.0


def load_engine(settings: Settings) -> WasmEngine:
    options = EngineOptions(
        profile_perfmap=(settings.profile or "").split(",", 1)[0] == "perfmap",
        cache_dir=None if settings.no_cache else (settings.cache_dir or default_cache_dir()),
    )
    if settings.component is None:
        demo = resources.files("wasmhost").joinpath("demo.wat").read_text()
        return WasmEngine(demo, options, text=True)
    return WasmEngine(settings.component, options)


class HttpTask:
    """One request for the guest: runs on a worker thread inside a GuestInstance."""

    __slots__ = ("req_id", "exchange")

    def __init__(self, req_id: int, exchange: HttpExchange) -> None:
        self.req_id = req_id
        self.exchange = exchange

    def run(self, instance: GuestInstance, run: TaskRun, hold_wakeups: bool = False) -> None:
        """``hold_wakeups``: the thread releases the response's wake-up itself
        (``release_held_wakeups`` between jobs), so queued requests share one."""
        ctx = instance.ctx
        # The response reaches the loop when this block ends, i.e. after the
        # request's cleanup: a client that sends its next request at once then
        # finds this instance (nearly) free instead of starting another one.
        with deferred_wakeups(ctx.wake_batch, hold_wakeups):
            self._run(instance, ctx, run)

    def _run(self, instance: GuestInstance, ctx: WasiCtx, run: TaskRun) -> None:
        ctx.request_id = self.req_id
        ctx.last_trap = None
        ctx.task_run = run
        self.exchange.attach(ctx)
        request, response_out = self.exchange.guest_resources()
        error: BaseException | None = None
        ctx.acquire_cpu_slot()
        try:
            instance.handle(request, response_out)
        except GuestTrap as exc:
            error = exc
            if isinstance(ctx.last_trap, GuestExit):
                log.warning("request %d: guest exited with status %d", self.req_id, ctx.last_trap.code)
            else:
                log.error("request %d: guest trapped (instance %d): %s", self.req_id, instance.id, exc)
            raise
        finally:
            ctx.release_cpu_slot()
            ctx.long_running = False  # the next request starts counted again
            ctx.task_run = None
            ctx.stdout.flush()
            ctx.stderr.flush()
            self.exchange.guest_returned(error)

    def fail(self, error: BaseException) -> None:
        """The handler gave up on this task (timeout, trap, shutdown): answer the client now."""
        self.exchange.guest_returned(error)


class EngineState:
    """The ``HandlerState`` for real guests: a store is a WasiCtx, an instance a GuestInstance."""

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.request_timeout = settings.request_timeout
        self.idle_instance_timeout = settings.idle_instance_timeout
        self.max_instance_reuse_count = settings.max_instance_reuse_count
        # A wasi:http 0.2 instance cannot be entered while a call is in flight,
        # so, as in wasmtime serve, more than 1 has no effect on 0.2 guests.
        if settings.max_instance_concurrent_reuse_count > 1:
            log.warning("--max-instance-concurrent-reuse-count %d has no effect on wasi:http 0.2 guests; using 1",
                        settings.max_instance_concurrent_reuse_count)
        self.max_instance_concurrent_reuse_count = 1
        self.max_instances = settings.max_instances
        # Guest code competes for the GIL and the cores: while this many
        # instances are busy executing, requests queue for them rather than
        # each starting a cold instance of its own (I/O waits do not count).
        self.max_busy_instances = runtime.executing_slots
        # A request that has run this long stops counting as busy and gives its
        # CPU slot up: a few long requests must not keep short ones queued.
        self.busy_slice = BUSY_SLICE

    def new_store(self, req_id: int | None) -> tuple[WasiCtx, Callable[[], None] | None]:
        runtime = self.runtime
        ctx = WasiCtx(runtime.wasi_config, runtime.loop, http_client=runtime.http_client)
        ctx.cpu_slots = runtime.cpu_slots
        if runtime.profiler is None:
            return ctx, None
        recorder = runtime.profiler.recorder()
        ctx.extras["profile"] = recorder

        def write_profile() -> None:
            before_waiting()  # file I/O: not on the loop's thread
            recorder.write()

        return ctx, write_profile

    def instantiate(self, store: WasiCtx, instance_pre: WasmEngine) -> GuestInstance:
        before_waiting()  # milliseconds of work ahead
        return instance_pre.instantiate(store, store.extras.get("profile"))

    def run_task(self, store: WasiCtx, instance: GuestInstance, task: HttpTask, run: TaskRun) -> None:
        # Runs on a lane of the runtime built in Runtime.start, which releases held wake-ups.
        task.run(instance, run, hold_wakeups=True)

    def task_running_long(self, store: WasiCtx) -> None:
        store.give_up_cpu_slot()

    def interrupt(self, store: WasiCtx, reason: str) -> None:
        store.interrupt(reason)

    def release(self, store: WasiCtx, instance: GuestInstance | None) -> None:
        # Freeing a store with a big memory takes most of a millisecond (ctypes lets
        # the GIL go meanwhile): not on the loop's thread.
        before_waiting()
        if instance is not None:
            instance.close()
        else:
            store.close()

    def handle_worker_error(self, error: WorkerError) -> None:
        if isinstance(error.error, (GuestTrap, RequestTimeoutError)):
            # Already logged with the request id when it happened; say which instance ended.
            log.info("instance %d dropped (requests %s): %s", error.worker_id, list(error.req_ids),
                     str(error.error).splitlines()[0])
        else:
            log.error("%s", error)


class Runtime:
    """Everything one served component needs; started and stopped by the app's signals."""

    def __init__(self, settings: Settings, engine: WasmEngine | None = None) -> None:
        self.settings = settings
        self.engine = engine if engine is not None else load_engine(settings)
        self.wasi_config = WasiConfig(
            env=settings.env_pairs(dict(os.environ)),
            allowed_outgoing=frozenset(settings.allow_outgoing),
            logging_prefix=not settings.no_logging_prefix,
        )
        self.header_overrides = settings.header_overrides()
        self.profiler = guest_profiler(settings.profile)
        self.executing_slots = settings.max_executing_requests or os.cpu_count() or 1
        self.cpu_slots = CpuSlots(self.executing_slots)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.http_client: Any = None
        self.proxy: ProxyHandler | None = None
        self.threads: ThreadRuntime | None = None
        self.request_slots: asyncio.Semaphore | None = None
        # The server's request handler tasks, cut off when a shutdown runs out of time.
        self.requests_in_flight: set[asyncio.Task[Any]] = set()
        self._shutdown_deadline: float | None = None
        self._cut_off: asyncio.TimerHandle | None = None

    async def start(self, loop: asyncio.AbstractEventLoop, http_client: Any) -> None:
        self.loop = loop
        self.http_client = http_client
        if self.settings.max_concurrent_requests:
            self.request_slots = asyncio.Semaphore(self.settings.max_concurrent_requests)
        self.engine.start()
        # On an InlineLoop, guest jobs run on the thread driving the loop (see
        # inline_loop); that needs the compiled binding, whose guest calls hand the
        # driving over once they run long.
        inline = loop if isinstance(loop, InlineLoop) and self.engine.compiled is not None else None
        self.threads = ThreadRuntime(between_jobs=release_held_wakeups, inline=inline)
        self.proxy = ProxyHandler(EngineState(self), self.engine, runtime=self.threads)

    def begin_shutdown(self) -> None:
        """The server stops accepting: requests in flight get ``shutdown_timeout`` to
        finish, then their handlers are cancelled (their guests' body streams close)."""
        loop = self.loop
        if loop is None or self._shutdown_deadline is not None:
            return
        timeout = self.settings.shutdown_timeout
        self._shutdown_deadline = loop.time() + timeout
        if math.isfinite(timeout):
            self._cut_off = loop.call_later(timeout, self._cut_off_requests)

    def _cut_off_requests(self) -> None:
        if self.requests_in_flight:
            log.warning("shutdown: %d requests still in flight after %ss; cutting them off",
                        len(self.requests_in_flight), self.settings.shutdown_timeout)
        for task in list(self.requests_in_flight):
            task.cancel()

    async def stop(self) -> None:
        if self._cut_off is not None:
            self._cut_off.cancel()
            self._cut_off = None
        if self.proxy is not None:
            # Guests still running (no client waits for them any more) get what
            # is left of the shutdown time, at least a second to see their streams
            # close and return, then their stores are interrupted.
            remaining = self.settings.shutdown_timeout
            if self._shutdown_deadline is not None and self.loop is not None:
                remaining = self._shutdown_deadline - self.loop.time()
            await self.proxy.close(timeout=max(remaining, SHUTDOWN_GRACE))
            self.proxy = None
        if self.threads is not None:
            self.threads.shutdown()
            self.threads = None
        self.engine.stop()
        if self.http_client is not None:
            await self.http_client.close()

    def dispatch(self, exchange: HttpExchange) -> int:
        """Hand a request to the handler; the response arrives through ``exchange``."""
        proxy = self.proxy
        if proxy is None:
            raise RuntimeError("the wasmhost app has not been started")
        req_id = proxy.next_req_id()
        proxy.spawn(req_id, HttpTask(req_id, exchange))
        return req_id
