"""Memory over many requests on one reused instance (no HTTP in the way).

    python benchmarks/memory_soak.py [GUEST ...]     # default: wat-hello hello echo
    SOAK_ROUNDS=12 python benchmarks/memory_soak.py echo

Serves 5 rounds of 4,000 requests through ``HttpTask.run`` on one instance,
letting the event loop run between rounds, and prints the process RSS and
the number of resource handles the instance still holds after each round.
Flat numbers mean no per-request leak on the host side (handles, C-side
values, loop callbacks).
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROUNDS = int(os.environ.get("SOAK_ROUNDS", "5"))
PER_ROUND = 4000


class _NoScheduler:
    def waiting_on_io(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def rss_mb() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 // (1024 * 1024)


async def soak(guest: str) -> None:
    from guests.build import build_guest
    from wasmhost.runtime import HttpTask, Runtime
    from wasmhost.settings import Settings
    from wasmhost.wasi.ctx import WasiCtx
    from wasmhost.wasi.http_exchange import HttpExchange

    runtime = Runtime(Settings(component=build_guest(guest)))
    loop = asyncio.get_running_loop()
    instance = runtime.engine.instantiate(WasiCtx(runtime.wasi_config, loop))
    rounds = []
    for _ in range(ROUNDS):
        for _ in range(PER_ROUND):
            exchange = HttpExchange(loop, "GET", "http", "bench", "/", [("x-a", b"1")], None, runtime.wasi_config)
            HttpTask(0, exchange).run(instance, _NoScheduler())  # type: ignore[arg-type]
        await asyncio.sleep(0)  # deliver the responses' loop callbacks
        gc.collect()
        rounds.append(f"{rss_mb()} MB/{len(instance.binding.table)} handles")
    instance.close()
    print(f"{guest}: after each {PER_ROUND} requests: " + ", ".join(rounds))


async def main(guests: list[str]) -> None:
    for guest in guests:
        await soak(guest)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["wat-hello", "hello", "echo"]))
