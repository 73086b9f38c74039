"""``wasmhost serve --workers N``: N server processes accepting on one address.

A Python process is bound by its GIL, so one wasmhost process uses mostly one
core; N processes, each with its own event loop, wasmtime engine and
instances, use N. The parent (``cli``) binds one SO_REUSEPORT socket per
worker, so a busy address fails before anything starts and the kernel spreads
connections evenly; this module starts the workers, relays SIGINT/SIGTERM to
them as SIGTERM and waits.

Workers are *spawned* (fresh interpreters), not forked: compiling a
component starts wasmtime's compiler thread pool in the compiling process,
and a forked child of that process deadlocks the next time it compiles (e.g.
with ``--no-cache``). A spawned worker shares no wasmtime or thread state
with the parent; it loads the component from the compiled-component cache
the parent filled while validating it.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
from multiprocessing.process import BaseProcess
from types import FrameType

from aiohttp import web

from .runtime import Runtime
from .server import create_app
from .settings import Settings, parse_addr

log = logging.getLogger("wasmhost.workers")


def run_workers(settings: Settings, socket_groups: list[list[socket.socket]]) -> int:
    """Serve from ``settings.workers`` processes, worker ``i`` on ``socket_groups[i]``, until
    SIGINT/SIGTERM; the exit status.

    0 after a graceful stop; 1 if a worker ended on its own (the others are
    then stopped too: no respawning) or did not stop cleanly.
    """
    host, _ = parse_addr(settings.addr)
    shown = f"[{host}]" if ":" in host else host
    port = socket_groups[0][0].getsockname()[1]  # the real one, also for --addr HOST:0
    context = multiprocessing.get_context("spawn")
    parent = os.getpid()
    workers = [
        context.Process(target=_worker, args=(index, settings, socks, parent), name=f"worker {index}")
        for index, socks in enumerate(socket_groups, start=1)
    ]
    running: dict[int, BaseProcess] = {}  # sentinel -> started worker not yet reaped
    stopping = False

    def stop(_signum: int | None = None, _frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = True
        for worker in running.values():
            if worker.pid is None:
                continue
            try:
                os.kill(worker.pid, signal.SIGTERM)  # the worker finishes its requests in flight
            except ProcessLookupError:
                pass

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, stop)
    # Workers start with SIGINT ignored (inherited across exec): Ctrl-C in a
    # terminal reaches the whole process group, and a worker signalled twice
    # (directly, then relayed) would cut its graceful shutdown short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for worker in workers:
            worker.start()
            running[worker.sentinel] = worker
        signal.signal(signal.SIGINT, stop)
        for sock in (sock for group in socket_groups for sock in group):
            sock.close()  # the workers hold them now; the port is freed when they exit
        if stopping:
            stop()  # a signal came while they were being started
        print(f"Serving HTTP on http://{shown}:{port}/ ({len(workers)} workers)", file=sys.stderr, flush=True)
        failed = False
        while running:
            for sentinel in multiprocessing.connection.wait(list(running)):
                assert isinstance(sentinel, int)
                ended = running.pop(sentinel)
                ended.join()
                if not stopping:
                    log.error("%s (pid %s) %s; stopping the others", ended.name, ended.pid, _ended(ended.exitcode))
                    failed = True
                    stop()
                elif ended.exitcode not in (0, -signal.SIGTERM):  # -SIGTERM: stopped while still starting
                    log.error("%s (pid %s) %s", ended.name, ended.pid, _ended(ended.exitcode))
                    failed = True
        return 1 if failed else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ended(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _worker(index: int, settings: Settings, socks: list[socket.socket], parent: int) -> None:
    """One worker process: its own Runtime (engine, instances, threads) serving on the inherited sockets."""
    from .cli import aiohttp_shutdown_timeout, new_event_loop, tune_gc

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent relays Ctrl-C as SIGTERM
    logging.basicConfig(level=logging.INFO, format=f"[worker {index}] %(message)s")
    if settings.max_executing_requests is None:
        # The cores are shared by all workers: each gets its part of the default.
        share = max(1, (os.cpu_count() or 1) // settings.workers)
        settings = settings.model_copy(update={"max_executing_requests": share})
    app = create_app(settings, runtime=Runtime(settings))
    tune_gc()
    loop = new_event_loop(settings)
    try:
        loop.run_until_complete(_serve(app, socks, parent, aiohttp_shutdown_timeout(settings)))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


async def _serve(app: web.Application, socks: list[socket.socket], parent: int, shutdown_timeout: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        for sock in socks:
            await web.SockSite(runner, sock).start()
        # Also stop when the parent is gone (e.g. SIGKILLed): nobody would stop us otherwise.
        while not stop.is_set() and os.getppid() == parent:
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
    finally:
        await runner.cleanup()  # stops accepting, lets requests in flight finish, stops the runtime
