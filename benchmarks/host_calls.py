"""Cost of host calls through wasmhost's binding layer, without HTTP in the way.

    python benchmarks/host_calls.py [GUEST ...]      # default: wat-hello hello

For the compiled binding (``wasmhost.binding._native``) and the pure-Python one:

1. The floor: a WAT component calling a ``u32 -> u32`` host function in a
   loop (trampoline + conversions + wasmtime's dynamic call path).
2. For each guest: one request through ``HttpTask.run`` on a reused instance,
   inline on this thread (no event loop round trips): wasm, host calls and
   the request's own bookkeeping.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasmtime import Store  # noqa: E402
from wasmtime import component as wc  # noqa: E402

from wasmhost.binding import linker as binding_linker  # noqa: E402
from wasmhost.engine import EngineOptions, build_engine  # noqa: E402
from wasmhost.wasi.ctx import WasiConfig, WasiCtx  # noqa: E402
from wasmhost.wasi.interface import HostInterface  # noqa: E402

FLOOR_WAT = """(component
  (import "bench:x/h" (instance $h (export "f" (func (param "a" u32) (result u32)))))
  (core func $f (canon lower (func $h "f")))
  (core module $m
    (import "h" "f" (func $f (param i32) (result i32)))
    (func (export "run") (param $n i32)
      (loop $l
        (drop (call $f (local.get $n)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br_if $l (local.get $n)))))
  (core instance $i (instantiate $m (with "h" (instance (export "f" (func $f))))))
  (func (export "run") (param "n" u32) (canon lift (core func $i "run")))
)"""


def floor(compiled: bool, calls: int = 50_000) -> float:
    engine = build_engine(EngineOptions())
    component = wc.Component(engine, FLOOR_WAT)
    iface = HostInterface("bench:x/h")
    iface.functions["f"] = lambda ctx, a: a
    host = binding_linker.HostLinker(engine, [iface], compiled=compiled)
    linker = host.link(component)
    store = Store(engine)
    store.set_epoch_deadline(1 << 40)
    host.bind_store(store, WasiCtx(WasiConfig()))
    run = linker.instantiate(store, component).get_func(store, "run")
    assert run is not None
    started = time.perf_counter()
    run(store, calls)
    return (time.perf_counter() - started) / calls * 1e6


class _NoScheduler:
    def waiting_on_io(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


async def per_request(guest: str, compiled: bool, requests: int = 3000) -> float:
    from guests.build import build_guest
    from wasmhost.binding import native
    from wasmhost.runtime import HttpTask, Runtime
    from wasmhost.settings import Settings
    from wasmhost.wasi.http_exchange import HttpExchange

    module = native.module
    if not compiled:
        native.module = None  # read once, when the engine is built
    try:
        runtime = Runtime(Settings(component=build_guest(guest)))
    finally:
        native.module = module
    loop = asyncio.get_running_loop()
    instance = runtime.engine.instantiate(WasiCtx(runtime.wasi_config, loop))

    def serve(count: int) -> None:
        for _ in range(count):
            exchange = HttpExchange(loop, "GET", "http", "bench", "/", [], None, runtime.wasi_config)
            HttpTask(0, exchange).run(instance, _NoScheduler())  # type: ignore[arg-type]

    serve(300)  # warm up
    started = time.perf_counter()
    serve(requests)
    total = (time.perf_counter() - started) / requests * 1e6
    instance.close()
    return total


async def main(guests: list[str]) -> None:
    from wasmhost.binding import native

    bindings = ([True] if native.module is not None else []) + [False]
    for compiled in bindings:
        name = "compiled" if compiled else "pure-Python"
        print(f"{name} binding: u32 -> u32 host call (floor): {floor(compiled):.2f} us per call")
        for guest in guests:
            total = await per_request(guest, compiled)
            print(f"{name} binding: {guest}: {total:.0f} us per request on a reused instance")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["wat-hello", "hello"]))
