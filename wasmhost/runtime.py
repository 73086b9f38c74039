"""Glue between the server, the scheduling core and the engine.

:class:`Runtime` is what one served component needs at run time: the
compiled engine, the :class:`~wasmhost.handler.ProxyHandler` and its
:class:`EngineState` (the ``HandlerState`` backed by wasmtime), and the
request-to-task conversion (:class:`HttpTask`).
"""
from __future__ import annotations

import asyncio
import logging
import os
from importlib import resources
from typing import Any, Callable

from .engine import EngineOptions, GuestInstance, GuestTrap, WasmEngine, default_cache_dir
from .handler import HandlerState, ProxyHandler, WorkerError
from .settings import Settings
from .wasi.ctx import GuestExit, WasiConfig, WasiCtx
from .wasi.http_exchange import HttpExchange

log = logging.getLogger("wasmhost")


def load_engine(settings: Settings) -> WasmEngine:
    options = EngineOptions(
        request_timeout=settings.request_timeout,
        profile_perfmap=(settings.profile or "").split(",", 1)[0] == "perfmap",
        cache_dir=None if settings.no_cache else (settings.cache_dir or default_cache_dir()),
    )
    if settings.component is None:
        demo = resources.files("wasmhost").joinpath("demo.wat").read_text()
        return WasmEngine(demo, options, text=True)
    return WasmEngine(settings.component, options)


class HttpTask:
    """One request for the guest: runs on a worker thread inside a GuestInstance."""

    __slots__ = ("req_id", "exchange", "timeout")

    def __init__(self, req_id: int, exchange: HttpExchange, timeout: float) -> None:
        self.req_id = req_id
        self.exchange = exchange
        self.timeout = timeout

    def run(self, instance: GuestInstance) -> None:
        ctx = instance.ctx
        ctx.request_id = self.req_id
        ctx.last_trap = None
        self.exchange.attach(ctx)
        request, response_out = self.exchange.guest_resources()
        error: BaseException | None = None
        try:
            instance.handle(request, response_out, self.timeout)
        except GuestTrap as exc:
            error = exc
            if isinstance(ctx.last_trap, GuestExit):
                log.warning("request %d: guest exited with status %d", self.req_id, ctx.last_trap.code)
            else:
                log.error("request %d: guest trapped (instance %d): %s", self.req_id, instance.id, exc)
            raise
        finally:
            ctx.stdout.flush()
            ctx.stderr.flush()
            self.exchange.guest_returned(error)

    def timed_out(self, reason: str) -> None:
        """The handler gave up on this task: answer the client now."""
        self.exchange.cancel(reason)


class EngineState(HandlerState):
    """``HandlerState`` for real guests: stores are GuestInstances."""

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.request_timeout = settings.request_timeout
        self.idle_instance_timeout = settings.idle_instance_timeout
        self.max_instance_reuse_count = settings.max_instance_reuse_count
        self.max_instance_concurrent_reuse_count = settings.max_instance_concurrent_reuse_count
        self.max_instances = settings.max_instances

    def new_store(self, req_id: int) -> tuple[GuestInstance, Callable[[], None] | None]:
        runtime = self.runtime
        ctx = WasiCtx(runtime.wasi_config, runtime.loop, http_client=runtime.http_client)
        return runtime.engine.instantiate(ctx), None

    def run_task(self, store: GuestInstance, task: HttpTask) -> None:
        task.run(store)

    def interrupt(self, store: GuestInstance, reason: str) -> None:
        store.poisoned = True
        store.ctx.interrupt(reason)

    def task_timed_out(self, task: HttpTask, reason: str) -> None:
        task.timed_out(reason)

    def close_store(self, store: GuestInstance) -> None:
        store.close()

    def handle_worker_error(self, error: WorkerError) -> None:
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
        self.loop: asyncio.AbstractEventLoop | None = None
        self.http_client: Any = None
        self.proxy: ProxyHandler | None = None
        self.request_slots: asyncio.Semaphore | None = None

    async def start(self, loop: asyncio.AbstractEventLoop, http_client: Any) -> None:
        self.loop = loop
        self.http_client = http_client
        if self.settings.max_concurrent_requests:
            self.request_slots = asyncio.Semaphore(self.settings.max_concurrent_requests)
        self.engine.start()
        self.proxy = ProxyHandler(EngineState(self), self.engine)

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.close()
            self.proxy = None
        self.engine.stop()
        if self.http_client is not None:
            await self.http_client.close()

    def dispatch(self, exchange: HttpExchange) -> int:
        """Hand a request to the handler; the response arrives through ``exchange``."""
        proxy = self.proxy
        if proxy is None:
            raise RuntimeError("the wasmhost app has not been started")
        req_id = proxy.next_req_id()
        proxy.spawn(req_id, HttpTask(req_id, exchange, self.settings.request_timeout))
        return req_id
