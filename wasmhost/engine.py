"""wasmtime side: Engine, Component, Linker, Stores, the epoch ticker.

``WasmEngine`` loads and checks one component, links the Python WASI host
into it once, and creates :class:`GuestInstance` objects (a Store, its
bindings, the instantiated component and its ``handle`` export) for workers.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

from wasmtime import Config, Engine, Store, WasmtimeError
from wasmtime import component as wc

from .binding import capi, native
from .binding.linker import HostLinker, LinkError
from .binding.store import StoreBinding, _error_text
from .wasi import all_interfaces
from .wasi.ctx import WasiCtx
from .wasi.interface import HostInterface, HostResource
from .wasi.wakeups import leave_loop

log = logging.getLogger("wasmhost.engine")

INCOMING_HANDLER = "wasi:http/incoming-handler@0.2"
HANDLE_ARGS = 2


class ComponentError(Exception):
    """The file is not a servable wasi:http 0.2 component (one-line message)."""


class GuestTrap(Exception):
    """The guest trapped (or was interrupted); ``str()`` holds wasmtime's message and backtrace."""


@dataclass(frozen=True)
class EngineOptions:
    # Seconds between epoch increments: how soon running wasm notices an interrupt.
    # None: 1 ms with the compiled binding (a native thread ticks, no GIL
    # needed), 10 ms without (the Python ticker takes the GIL for every tick).
    epoch_tick: float | None = None
    # Use the compiled binding (wasmhost.binding._native) when it is built.
    compiled_binding: bool = True
    # Seconds between deliveries of loop wake-ups a busy guest holds back.
    wakeup_flush: float = 0.010
    # Epoch ticks a guest call keeps the GIL before running on without it
    # (compiled binding only): short calls then make their host calls without
    # handing the GIL back and forth; long ones still run in parallel.
    gil_hold_ticks: int = 2
    profile_perfmap: bool = False
    # Where compiled components are kept (keyed by content and engine settings);
    # None disables the cache. Compiling an 18 MB componentize-py guest takes
    # seconds, loading the cached artifact ~40 ms.
    cache_dir: Path | None = None


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wasmhost"


def build_engine(options: EngineOptions) -> Engine:
    config = Config()
    config.epoch_interruption = True
    if options.profile_perfmap:
        config.profiler = "perfmap"
    return Engine(config)


def _cache_key(data: bytes | str, options: EngineOptions) -> str:
    digest = hashlib.sha256()
    digest.update(data.encode() if isinstance(data, str) else data)
    # Artifacts are only valid for the same wasmtime build and engine settings.
    digest.update(f"|wasmtime={metadata.version('wasmtime')}|epoch=1|perfmap={options.profile_perfmap}".encode())
    return digest.hexdigest()[:40]


def _compile(engine: Engine, data: bytes | str, options: EngineOptions) -> wc.Component:
    if options.cache_dir is None:
        return wc.Component(engine, data)
    path = options.cache_dir / f"{_cache_key(data, options)}.cwasm"
    if path.exists():
        try:
            return wc.Component.deserialize_file(engine, str(path))
        except WasmtimeError:
            log.warning("ignoring unusable cached artifact %s", path)
    component = wc.Component(engine, data)
    try:
        options.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(component.serialize())
        os.replace(tmp, path)  # atomic: concurrent servers never read half a file
    except OSError as exc:
        log.warning("cannot write the compiled-component cache %s: %s", path, exc)
    return component


def load_component(
    engine: Engine, source: Path | str | bytes, options: EngineOptions = EngineOptions(), *, text: bool = False,
) -> wc.Component:
    """Compile a component from a path, bytes, or WAT text; raise ComponentError with one line."""
    try:
        if isinstance(source, Path):
            data: Any = source.read_bytes()
            if source.suffix == ".wat":
                text, data = True, data.decode("utf-8", "replace")
        else:
            data = source
        if not text and isinstance(data, bytes) and not data.startswith(b"\0asm"):
            raise ComponentError(f"{_describe(source)} is not a WebAssembly file")
        if isinstance(data, bytes) and data[4:8] == b"\x01\0\0\0":
            raise ComponentError(f"{_describe(source)} is a core WebAssembly module, not a component")
        return _compile(engine, data, options)
    except ComponentError:
        raise
    except OSError as exc:
        raise ComponentError(f"cannot read {_describe(source)}: {exc.strerror or exc}") from None
    except WasmtimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid component"
        raise ComponentError(f"{_describe(source)} is not a valid component: {first}") from None


def _describe(source: Path | str | bytes) -> str:
    return str(source) if isinstance(source, Path) else "the component"


def find_incoming_handler(engine: Engine, component: wc.Component) -> str:
    """The name of the ``wasi:http/incoming-handler@0.2.x`` export, or ComponentError."""
    exports = list(component.type.exports(engine))
    for name in exports:
        if name.startswith(INCOMING_HANDLER + "."):
            return name
    for name in exports:
        if name.startswith("wasi:http/handler@0.3") or name.startswith("wasi:http/incoming-handler@0.3"):
            raise ComponentError(f"the component exports {name}: wasi:http 0.3 components are not supported yet")
    listed = ", ".join(exports) or "nothing"
    raise ComponentError(f"the component does not export wasi:http/incoming-handler@0.2.x (it exports {listed})")


class EpochTicker:
    """Advances the engine's epoch every ``tick`` seconds so store deadlines fire,
    and calls ``on_tick`` every ``flush`` seconds.

    With the compiled binding the epoch is advanced by a native thread: a guest
    call may hold the GIL, and the tick is what makes it let go.
    """

    def __init__(
        self, engine: Engine, tick: float, on_tick: Callable[[], None] | None = None, flush: float | None = None,
        compiled: ModuleType | None = None,
    ) -> None:
        self.engine = engine
        self.compiled = compiled
        self.tick = tick
        self.flush = tick if flush is None else flush
        self.on_tick = on_tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._native_ticker: int | None = None

    def start(self) -> None:
        if self.compiled is not None and self._native_ticker is None:
            engine_ptr = ctypes.cast(self.engine.ptr(), ctypes.c_void_p).value
            self._native_ticker = self.compiled.ticker_start(engine_ptr, int(self.tick * 1e9))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wasmhost-epoch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        interval = self.flush if self._native_ticker is not None else self.tick
        while not self._stop.wait(interval):
            if self._native_ticker is None:
                self.engine.increment_epoch()
            if self.on_tick is not None:
                self.on_tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._native_ticker is not None and self.compiled is not None:
            self.compiled.ticker_stop(self._native_ticker)
            self._native_ticker = None


class WasmEngine:
    """One compiled, linked component, ready to instantiate on any thread."""

    def __init__(
        self,
        component: Path | str | bytes,
        options: EngineOptions = EngineOptions(),
        *,
        text: bool = False,
        interfaces: Iterable[HostInterface] | None = None,
    ) -> None:
        self.options = options
        # The compiled binding, or None for the pure-Python one.
        self.compiled: ModuleType | None = native.module if options.compiled_binding else None
        self.engine = build_engine(options)
        self.component = load_component(self.engine, component, options, text=text)
        self.export_name = find_incoming_handler(self.engine, self.component)
        self.host = HostLinker(
            self.engine, all_interfaces() if interfaces is None else interfaces, compiled=self.compiled is not None,
        )
        try:
            self.linker = self.host.link(self.component)
        except LinkError as exc:
            raise ComponentError(str(exc)) from None
        export = self.component.get_export_index(self.export_name)
        handle = self.component.get_export_index("handle", export) if export is not None else None
        if handle is None:
            raise ComponentError(f"{self.export_name} has no `handle` function")
        self._handle_index = handle
        self._request_type = self.host.resource_type_id("incoming-request")
        self._outparam_type = self.host.resource_type_id("response-outparam")
        tick = options.epoch_tick or (0.001 if self.compiled is not None else 0.010)
        self.ticker = EpochTicker(self.engine, tick, self._flush_wakeups, options.wakeup_flush, self.compiled)
        self._on_epoch = capi.EPOCH_CALLBACK(self._epoch_reached)
        self._instance_ids = 0
        self._ids_lock = threading.Lock()

    def start(self) -> None:
        self.ticker.start()

    def stop(self) -> None:
        self.ticker.stop()

    def _flush_wakeups(self) -> None:
        """Deliver loop wake-ups a busy guest has been holding for a tick."""
        for binding in list(self.host.stores.values()):
            batch = binding.ctx.wake_batch
            if batch is not None:
                batch.flush()

    def _epoch_reached(self, ctx_ptr: int, _data: int, delta: Any, kind: Any) -> int:
        """Every epoch tick while a store runs wasm: trap it once it is interrupted.

        Interruption comes from other threads (request timeout, a sibling's
        trap, shutdown); a store can only be stopped from its own thread, so
        running wasm checks in here once per tick.
        """
        binding = self.host.stores.get(ctx_ptr)
        if binding is not None and binding.ctx.interrupted is not None:
            return capi.error_ptr(f"interrupted: {binding.ctx.interrupted}")
        delta[0] = 1
        kind[0] = capi.UPDATE_DEADLINE_CONTINUE
        return 0

    def instantiate(self, ctx: WasiCtx, profile: Any = None) -> "GuestInstance":
        """A new store and instance for ``ctx``; ``profile`` (a ProfileRecorder) times it."""
        with self._ids_lock:
            self._instance_ids += 1
            instance_id = self._instance_ids
        store = Store(self.engine)
        interrupt_state: int | None = None
        compiled = self.compiled
        if compiled is not None:
            # Running wasm is stopped by the C epoch callback reading this state.
            interrupt_state = compiled.interrupt_state_new()
            capi.store_epoch_deadline_callback(
                store.ptr(), native.addresses["epoch_reached"], interrupt_state, capi.keep_data,
            )
            ctx.on_interrupt = partial(compiled.interrupt, interrupt_state)
            ctx.after_wait = compiled.hold_gil_again
        else:
            capi.store_epoch_deadline_callback(store.ptr(), self._on_epoch, None, capi.keep_data)
        store.set_epoch_deadline(1)
        binding = self.host.bind_store(store, ctx)
        binding.profile = profile
        started = time.perf_counter_ns()
        try:
            instance = self.linker.instantiate(store, self.component)
            func = instance.get_func(store, self._handle_index)
        except WasmtimeError as exc:
            func, failure = None, f"instantiation failed: {exc}"
        else:
            failure = "the instance has no handle function"
        if func is None:
            self.host.unbind_store(binding)
            _close_store(store, ctx, compiled, interrupt_state)
            raise GuestTrap(failure)
        finished = time.perf_counter_ns()
        if profile is not None:
            profile.instantiated(started, finished)
        return GuestInstance(self, instance_id, store, binding, func._func, interrupt_state)


class GuestInstance:
    """A Store with one instantiated component; used by one worker thread at a time."""

    def __init__(
        self, engine: WasmEngine, instance_id: int, store: Store, binding: StoreBinding,
        func: Any, interrupt_state: int | None = None,
    ) -> None:
        self.engine = engine
        self.id = instance_id
        self.store = store
        self.binding = binding
        self.ctx: WasiCtx = binding.ctx
        self._func = func
        self._func_ptr = ctypes.addressof(func)
        # A fresh instance's first call is slow (its memory is touched for the
        # first time): it runs without the GIL from the start.
        self._gil_hold_ticks = 0
        self._interrupt_state = interrupt_state
        self._args = ctypes.create_string_buffer(capi.VAL_SIZE * HANDLE_ARGS)

    def handle(self, request: HostResource, response_out: HostResource) -> None:
        """Call ``handle(request, response-out)``; raise GuestTrap if the guest traps."""
        binding = self.binding
        profile = binding.profile
        if profile is not None:
            profile.request_started(self.ctx.request_id)
        engine = self.engine
        compiled = engine.compiled
        if compiled is not None:
            error = compiled.call_handler(
                self._func_ptr, binding.ctx_ptr, binding.table, request, engine._request_type,
                response_out, engine._outparam_type, self._gil_hold_ticks, leave_loop,
            )
            self._gil_hold_ticks = engine.options.gil_hold_ticks
        else:
            args = ctypes.addressof(self._args)
            second = args + capi.VAL_SIZE
            capi.write_u8(args, capi.K_RESOURCE)
            capi.write_u64(args + capi.PAYLOAD, binding.new_own(request, engine._request_type))
            capi.write_u8(second, capi.K_RESOURCE)
            capi.write_u64(second + capi.PAYLOAD, binding.new_own(response_out, engine._outparam_type))
            try:
                error = capi.func_call(self._func_ptr, binding.ctx_ptr, args, HANDLE_ARGS, None, 0)
            finally:
                capi.resource_any_delete(capi.read_u64(args + capi.PAYLOAD))
                capi.resource_any_delete(capi.read_u64(second + capi.PAYLOAD))
        message = _error_text(error) if error else None
        if profile is not None:
            profile.request_finished(message.splitlines()[0] if message else None)
        if message is not None:
            raise GuestTrap(message)

    def close(self) -> None:
        self.engine.host.unbind_store(self.binding)
        self.ctx.close()
        _close_store(self.store, self.ctx, self.engine.compiled, self._interrupt_state)
        self._interrupt_state = None


def _close_store(store: Store, ctx: WasiCtx, compiled: ModuleType | None, interrupt_state: int | None) -> None:
    """Free the store, then the native interruption state its epoch callback reads."""
    with ctx.cond:  # no interrupt() may be writing the state while it is freed
        ctx.on_interrupt = None
    store.close()
    if interrupt_state is not None and compiled is not None:
        compiled.interrupt_state_free(interrupt_state)
