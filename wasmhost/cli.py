"""``wasmhost serve``: the command line on top of :class:`~wasmhost.settings.Settings`."""
from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from . import __version__

if TYPE_CHECKING:
    from .settings import Settings

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wasmhost", description="Serve wasi:http components from Python.")
    parser.add_argument("--version", action="version", version=f"wasmhost {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve a wasi:http/proxy 0.2 component over HTTP",
        description="Serve a wasi:http/proxy 0.2.x component over HTTP/1.1 (the built-in demo when no component is given).",
    )
    serve.add_argument("component", nargs="?", type=Path, help="the component (.wasm or .wat)")
    serve.add_argument("--addr", help="socket address to bind to (default 0.0.0.0:8080)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="server processes accepting on the same address, each with its own instances (default 1)")
    serve.add_argument("--loop", choices=("inline", "asyncio"),
                       help="event loop: inline (default) runs guest calls on the loop's thread, handing the loop "
                            "over when they block; asyncio runs them on a thread per instance")
    serve.add_argument("--env", action="append", metavar="NAME[=VAL]",
                       help="pass an environment variable to the guest (repeatable)")
    serve.add_argument("-H", "--header", action="append", metavar="'NAME: VALUE'",
                       help="add or replace a request header before it reaches the guest (repeatable)")
    serve.add_argument("--no-logging-prefix", action="store_true", default=None,
                       help="do not prefix guest output with 'stdout [REQ_ID] :: '")
    serve.add_argument("--max-instance-reuse-count", type=int, metavar="N",
                       help="requests one instance serves before it is replaced (default 128; 1 = fresh instance per request)")
    serve.add_argument("--max-instance-concurrent-reuse-count", type=int, metavar="N",
                       help="requests one instance serves at once (default 1; wasi:http 0.2 guests cannot run more)")
    serve.add_argument("--idle-instance-timeout", metavar="DURATION",
                       help="how long an idle instance is kept for reuse (default 1s)")
    serve.add_argument("--request-timeout", metavar="DURATION",
                       help="longest a request may run in the guest, e.g. 30s (default: no limit)")
    serve.add_argument("--shutdown-timeout", metavar="DURATION",
                       help="on SIGTERM/SIGINT, how long requests in flight get to finish before they are cut off "
                            "(default 30s; a second signal stops at once)")
    serve.add_argument("-W", dest="wasm_options", action="append", metavar="timeout=DURATION",
                       help="wasmtime-style wasm option; `timeout=` sets --request-timeout")
    serve.add_argument("--max-instances", type=int, metavar="N", help="bound on live instances; requests queue beyond it")
    serve.add_argument("--max-concurrent-requests", type=int, metavar="N",
                       help="requests handled at once; more wait for a slot")
    serve.add_argument("--max-executing-requests", type=int, metavar="N",
                       help="requests executing guest code at once; while that many instances are busy, requests "
                            "queue for them instead of starting more; those blocked on I/O do not count (default: CPU cores)")
    serve.add_argument("--allow-outgoing", action="append", metavar="HOST[:PORT]",
                       help="let the guest send outgoing requests to this authority (repeatable)")
    serve.add_argument("--max-request-body", type=int, metavar="BYTES",
                       help="largest request body accepted (default 1 GiB)")
    serve.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help="where compiled components are cached (default ~/.cache/wasmhost)")
    serve.add_argument("--no-cache", action="store_true", default=None, help="do not cache compiled components")
    serve.add_argument("--profile", metavar="guest[,PATH]|perfmap", help="write a guest profile per instance, or a perf map")
    return parser


def _settings_input(args: argparse.Namespace) -> dict[str, Any]:
    """Only what was given on the command line, so WASMHOST_* variables fill the rest."""
    given = {
        key: value for key, value in vars(args).items()
        if value is not None and key not in ("command", "wasm_options")
    }
    for option in args.wasm_options or []:
        key, sep, value = option.partition("=")
        if key != "timeout" or not sep:
            raise ValueError(f"unsupported -W option {option!r} (only timeout=DURATION is supported)")
        given["request_timeout"] = value
    return given


def _fail(message: str) -> int:
    print(f"wasmhost: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .settings import Settings

    try:
        settings = Settings(**_settings_input(args))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]).replace("_", "-")
        return _fail(f"--{where}: {first['msg']}")
    except ValueError as exc:
        return _fail(str(exc))
    return serve(settings)


def serve(settings: Any) -> int:
    from aiohttp import web

    from .engine import ComponentError
    from .runtime import Runtime
    from .server import create_app
    from .settings import parse_addr

    try:
        runtime = Runtime(settings)
    except ComponentError as exc:
        return _fail(str(exc))
    host, port = parse_addr(settings.addr)
    try:
        socket_groups = bind(host, port, copies=settings.workers)
    except OSError as exc:
        return _fail(f"cannot listen on {settings.addr}: {exc.strerror or exc}")
    if settings.workers > 1:
        from .workers import run_workers

        # The component is known to be servable; each worker loads its own copy
        # (from the compiled-component cache this one just filled).
        del runtime
        return run_workers(settings, socket_groups)
    app = create_app(settings, runtime=runtime)
    tune_gc()
    shown = f"[{host}]" if ":" in host else host
    (socks,) = socket_groups
    real_port = socks[0].getsockname()[1]  # also for --addr HOST:0
    web.run_app(
        app, sock=socks, access_log=None, loop=new_event_loop(settings),
        shutdown_timeout=aiohttp_shutdown_timeout(settings),
        print=lambda _: print(f"Serving HTTP on http://{shown}:{real_port}/", file=sys.stderr, flush=True),
    )
    return 0


def aiohttp_shutdown_timeout(settings: Settings) -> float:
    """aiohttp's own wait for handlers at shutdown: past ours, which cuts requests off
    at ``settings.shutdown_timeout`` (see Runtime.begin_shutdown)."""
    return settings.shutdown_timeout + 5.0


def bind(host: str, port: int, copies: int = 1, backlog: int = 128) -> list[list[socket.socket]]:
    """``copies`` sets of listening sockets on every address ``host`` resolves to,
    set up as asyncio's create_server does.

    With several copies (one per worker process) every socket has
    SO_REUSEPORT, so the kernel spreads new connections over the workers;
    with one socket shared by all workers, whichever woke first would take
    most keep-alive connections and leave the others idle.
    """
    groups: list[list[socket.socket]] = [[] for _ in range(copies)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            for group in groups:
                sock = socket.socket(family, kind, proto)
                group.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if copies > 1:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and groups[0][0] is not sock:  # one port for everything: the first one's
                    address = (address[0], groups[0][0].getsockname()[1], *address[2:])
                sock.bind(address)
                sock.listen(backlog)
    except OSError:
        for group in groups:
            for sock in group:
                sock.close()
        raise
    return groups


def new_event_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    """The event loop ``--loop`` asks for."""
    if settings.loop == "inline":
        from .inline_loop import InlineLoop

        return InlineLoop()
    return asyncio.new_event_loop()


def tune_gc() -> None:
    """Keep the cyclic GC off the request path (this process is ours; embedders decide for theirs).

    Each full collection walks every object of the loaded server (~150,000:
    aiohttp, wasmtime-py, pydantic); freezing what exists at startup takes
    them out of every later collection. Measured: ~40 -> ~15 us of GC per
    request on the hello guest (benchmarks/host_calls.py setting). The young
    generation's threshold goes from 700 to 5,000 allocations: 50 requests in
    flight keep more than 700 objects alive, so it was collected every ~50
    requests for nothing (hello at hey -c 50, timed with gc.callbacks: 9 -> 2 us
    of GC per request).
    """
    import gc

    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(5000, older, oldest)


if __name__ == "__main__":
    sys.exit(main())
