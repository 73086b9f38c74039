"""The aiohttp side: ``create_app()`` builds an application that serves one component.

Each HTTP request becomes an :class:`~wasmhost.wasi.http_exchange.HttpExchange`
(request head, a body pipe fed from the socket) and a task for the
:class:`~wasmhost.handler.ProxyHandler`; the response head the guest sets is
sent as soon as it is set and its body streams out as the guest writes it.
The app owns its engine, handler and HTTP client through startup/cleanup
signals, so several apps can run side by side or mounted as sub-apps.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence, cast

from aiohttp import ClientSession, DummyCookieJar, web, web_urldispatcher
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict
from yarl import URL

from .runtime import Runtime
from .settings import Settings
from .handler import RequestTimeoutError
from .wasi.http_exchange import GuestHttpError, GuestResponseError, GuestTrapped, HttpExchange
from .wasi.pipe import Pipe, PipeFailed

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import _InfoDict

log = logging.getLogger("wasmhost.server")

RUNTIME_KEY = web.AppKey("wasmhost_runtime", Runtime)
# Headers aiohttp computes itself from how the body is sent.
_FRAMING_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive"}
_NO_BODY_STATUSES = {204, 304}


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> web.Application:
    """An aiohttp application serving ``settings.component`` (or the built-in demo).

    Pass a ``runtime`` that was built beforehand (the CLI does, so a bad
    component fails before any socket is bound); otherwise the component is
    loaded when the app starts.
    """
    settings = settings or Settings()
    # Request bodies reach the guest as sent: a gzip body with its
    # content-encoding header, as wasmtime serve passes it (aiohttp would
    # decompress it and keep the header). As a sub-app, the root app's
    # handler_args decide (see README, Embedding).
    app = web.Application(client_max_size=settings.max_request_body, handler_args={"auto_decompress": False})
    runtime = app[RUNTIME_KEY] = runtime if runtime is not None else Runtime(settings)
    app.on_startup.append(_start)
    app.on_shutdown.append(_begin_shutdown)
    app.on_cleanup.append(_stop)
    resource = _AnyPath()
    app.router.register_resource(resource)
    resource.add_route("*", _handler(runtime))
    return app


class _AnyPath(web_urldispatcher.Resource):
    """A resource matching every path (below the sub-app prefix, if mounted).

    Same routing as ``add_route("*", "/{tail:.*}")`` without its regular
    expression and match dict on every request: the router finds it by its
    canonical path, the prefix, which every path under the app walks up to.
    """

    def __init__(self) -> None:
        super().__init__()
        self._prefix = ""

    @property
    def canonical(self) -> str:
        return self._prefix or "/"

    def add_prefix(self, prefix: str) -> None:
        self._prefix = prefix + self._prefix

    def _match(self, path: str) -> dict[str, str] | None:
        return {} if self.raw_match(path) else None

    def raw_match(self, path: str) -> bool:
        prefix = self._prefix
        return not prefix or path == prefix or path.startswith(prefix + "/")

    def get_info(self) -> "_InfoDict":
        return {"prefix": self.canonical}

    def url_for(self) -> URL:  # type: ignore[override]
        return URL.build(path=self.canonical, encoded=True)

    def __repr__(self) -> str:
        return f"<wasmhost any-path resource {self.canonical}>"


async def _start(app: web.Application) -> None:
    runtime = app[RUNTIME_KEY]
    # A cookie jar would carry cookies from one guest's outgoing requests to another's.
    session = ClientSession(auto_decompress=False, cookie_jar=DummyCookieJar())
    await runtime.start(asyncio.get_running_loop(), session)


async def _begin_shutdown(app: web.Application) -> None:
    app[RUNTIME_KEY].begin_shutdown()


async def _stop(app: web.Application) -> None:
    await app[RUNTIME_KEY].stop()


def _request_headers(
    request: web.Request, overrides: list[tuple[str, bytes]],
) -> Sequence[tuple[str | bytes, bytes]]:
    """The headers the guest sees: as received (converted only if the guest reads
    them), with the ``-H`` overrides replacing same-named ones."""
    if not overrides:
        return request.raw_headers
    replaced = {name for name, _ in overrides}
    kept: list[tuple[str | bytes, bytes]] = [
        (name, value) for name, value in request.raw_headers if name.decode("latin-1").lower() not in replaced
    ]
    return kept + list(overrides)


async def _feed_body(request: web.Request, pipe: Pipe, limit: int) -> None:
    """Copy the request body into the pipe the guest reads, with backpressure."""
    received = 0
    try:
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            received += len(chunk)
            if received > limit:
                pipe.fail(ValueError(f"request body larger than {limit} bytes"))
                return
            await pipe.feed(chunk)
        pipe.finish()
    except PipeFailed:
        return  # the guest stopped reading; nothing more to deliver
    except (asyncio.CancelledError, ConnectionError, OSError) as exc:
        pipe.fail(exc if isinstance(exc, Exception) else ConnectionAbortedError("request cancelled"))
        if isinstance(exc, asyncio.CancelledError):
            raise
    except Exception as exc:  # e.g. aiohttp's payload errors on a truncated body
        pipe.fail(exc)


def _handler(runtime: Runtime) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The request handler of one app, bound to its runtime (no per-request app look-ups)."""

    in_flight = runtime.requests_in_flight

    async def serve(request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None  # aiohttp runs every handler in a task
        in_flight.add(task)
        try:
            slots = runtime.request_slots
            if slots is None:
                return await _serve_one(runtime, request)
            async with slots:  # --max-concurrent-requests: the rest wait here
                return await _serve_one(runtime, request)
        finally:
            in_flight.discard(task)

    return serve


async def _serve_one(runtime: Runtime, request: web.Request) -> web.StreamResponse:
    loop = runtime.loop
    assert loop is not None, "the wasmhost app has not been started"
    limit = runtime.settings.max_request_body
    declared = request.content_length
    if declared is not None and declared > limit:
        return web.Response(status=413, text=f"request body larger than {limit} bytes\n")
    body: Pipe | None = None
    if request.body_exists:
        body = Pipe(loop, runtime.wasi_config.pipe_capacity)
    exchange = HttpExchange(
        loop,
        request.method,
        "https" if request.secure else "http",
        # Not request.host: without a Host header that is the server's FQDN, looked up per request.
        request.headers.get("Host"),
        request.raw_path,
        _request_headers(request, runtime.header_overrides),
        body,
        runtime.wasi_config,
    )
    feeder = asyncio.ensure_future(_feed_body(request, body, limit)) if body is not None else None
    req_id = runtime.dispatch(exchange)
    try:
        try:
            response = await exchange.response()
        except GuestHttpError as exc:
            return _error_response(req_id, exc)
        return await _send(request, response, req_id)
    finally:
        if feeder is not None and not feeder.done():
            feeder.cancel()


def _error_response(req_id: int, exc: GuestHttpError) -> web.Response:
    """The guest produced no response: say so with a 5xx (the details go to the log)."""
    cause = exc.error if isinstance(exc, GuestTrapped) else None
    if isinstance(cause, RequestTimeoutError):
        log.error("request %s: %s", req_id, cause)
        return web.Response(status=504, text="request timed out\n")
    if isinstance(exc, GuestResponseError):
        log.error("request %s: guest responded with error-code %s", req_id, exc.error_code)
    elif cause is None:
        log.error("request %s: %s", req_id, exc)
    # Traps were logged with their backtrace by the worker.
    return web.Response(status=500, text="internal server error\n")


async def _send(request: web.Request, response: Any, req_id: int) -> web.StreamResponse:
    declared_length: int | None = None
    passed: list[tuple[str, str]] = []
    for name, value in response.headers:
        key = name.lower()  # the guest's casing is kept; framing names match in any case
        if key in _FRAMING_HEADERS:
            if key == "content-length":
                declared_length = int(value)
            continue
        passed.append((name, value.decode("latin-1")))
    headers: CIMultiDict[str] = CIMultiDict(passed)
    pipe: Pipe | None = response.body
    has_body = request.method != "HEAD" and response.status >= 200 and response.status not in _NO_BODY_STATUSES
    complete = pipe.take_complete() if has_body and pipe is not None else None
    if complete is not None and not response.trailers():
        # The guest finished before we started sending (the common case): one
        # write of head and body, framed by its length rather than chunked.
        return web.Response(status=response.status, headers=headers, body=complete)
    out = web.StreamResponse(status=response.status, headers=headers)
    if declared_length is not None:
        out.content_length = declared_length
    elif has_body and request.version >= (1, 1):
        out.enable_chunked_encoding()
    try:
        await out.prepare(request)
        await _stream_body(request, out, response, pipe, has_body, complete, req_id)
    except ConnectionError:
        # The client went away (before the head or during the body): a normal
        # event, not a server error. Nobody reads the rest of the body now.
        log.debug("request %s: client disconnected before the whole response was sent", req_id)
        if pipe is not None:
            pipe.abort(ConnectionAbortedError("client disconnected"))
    except BaseException:  # e.g. cancelled: the guest must not wait on a pipe nobody drains
        if pipe is not None:
            pipe.abort(ConnectionAbortedError("the response was abandoned"))
        raise
    return out


async def _stream_body(
    request: web.Request, out: web.StreamResponse, response: Any, pipe: Pipe | None,
    has_body: bool, complete: bytes | None, req_id: int,
) -> None:
    """After the head: the body as the guest writes it, then trailers or the end."""
    if pipe is None:
        await out.write_eof()
        return
    if not has_body:
        # Nothing may follow the head; still drain so the guest is never stuck
        # writing. A failing body does not matter: the head alone is the answer.
        with contextlib.suppress(PipeFailed):
            while await pipe.drain() is not None:
                continue
        await out.write_eof()
        return
    if complete is not None:  # finished, with trailers: they need the chunked framing
        if not out.chunked:
            await out.write_eof(complete)
            return
        await out.write(complete)
    try:
        while (chunk := await pipe.drain()) is not None:
            await out.write(chunk)
    except PipeFailed as exc:
        # The head is already out: the only honest signal left is to cut the connection.
        log.error("request %s: response body failed after the head was sent: %s", req_id, exc.args[0] if exc.args else exc)
        _abort(request)
        return
    trailers = response.trailers()
    if trailers and out.chunked:
        await _write_trailers(out, trailers)
    else:
        await out.write_eof()


async def _write_trailers(out: web.StreamResponse, trailers: list[tuple[str, bytes]]) -> None:
    """End a chunked body with a trailer section (aiohttp has no API for it)."""
    # aiohttp offers no public trailer support: this writes through its StreamWriter.
    writer = cast(StreamWriter, out._payload_writer)  # noqa: SLF001
    assert writer is not None
    block = b"".join(name.encode("latin-1") + b": " + value + b"\r\n" for name, value in trailers)
    writer.chunked = False
    await writer.write(b"0\r\n" + block + b"\r\n")
    writer.chunked = True
    await writer.drain()
    writer._eof = True  # noqa: SLF001 - the terminating chunk was written above
    out._eof_sent = True  # noqa: SLF001


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort() if hasattr(transport, "abort") else transport.close()

