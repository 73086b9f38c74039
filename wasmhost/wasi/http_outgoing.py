"""wasi:http/outgoing-handler: guest HTTP requests sent with the server's aiohttp client.

``handle`` validates the request on the worker thread, refuses it with
``HTTP-request-denied`` unless its authority is allowed
(``WasiConfig.allowed_outgoing``: an entry ``host`` allows that host on any
port, ``host:port`` only that port; a request without a port uses the
scheme's default), then runs it on the event loop with
``asyncio.run_coroutine_threadsafe``. The request body streams from the
guest's body pipe, the response body into a new pipe (backpressure both
ways). The future becomes ready when the response head arrives or the
request fails.

Timeouts (``request-options``, default 600 s each, like wasmtime):
connect -> ``connection-timeout``; first byte of the response (counted from
the end of the request body) and between body chunks ->
``connection-read-timeout``. aiohttp/OS errors map to error-code cases in
:func:`client_error_code`.

Requests still running when the guest's ``handle`` returns are cancelled by
the exchange (:func:`cancel_in_flight`): no guest code can observe them.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import socket
from typing import Any, AsyncIterator

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .ctx import WasiCtx
from .http_body import IncomingBody, OutgoingBodyChannel
from .http_errors import HttpCodeError, body_size_error, dns_error, error_code_of, internal_error
from .http_fields import Fields
from .http_response import FutureIncomingResponse, IncomingResponse
from .http_types import RequestOptions, OutgoingRequest, method_name, parse_authority, scheme_name
from .interface import Case, Err, HostInterface
from .pipe import Pipe, PipeFailed

outgoing_handler_interface = HostInterface("wasi:http/outgoing-handler")

INTERFACES: tuple[HostInterface, ...] = (outgoing_handler_interface,)

DEFAULT_TIMEOUT_NS = 600 * 1_000_000_000
# aiohttp treats a zero timeout as "none"; the smallest one we pass instead.
_MIN_TIMEOUT_S = 0.001
# Headers aiohttp would add on its own; a guest's request carries only what it set.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_IN_FLIGHT = "wasi:http/outgoing-handler in-flight"


def _seconds(ns: int | None) -> float:
    return max((DEFAULT_TIMEOUT_NS if ns is None else ns) / 1e9, _MIN_TIMEOUT_S)


def is_allowed(allowed: frozenset[str], host: str, port: int) -> bool:
    entries = {entry.strip().lower() for entry in allowed}
    host = host.lower()
    return host in entries or f"{host}:{port}" in entries


def cancel_in_flight(ctx: WasiCtx) -> None:
    """Stop every outgoing request this store started that is still running."""
    in_flight: set[concurrent.futures.Future[None]] | None = ctx.extras.get(_IN_FLIGHT)
    if not in_flight:  # the common case: no outgoing request left running
        return
    for running in list(in_flight):  # list(): the loop thread discards concurrently
        running.cancel()
    in_flight.clear()


@outgoing_handler_interface.func("handle")
def handle(ctx: WasiCtx, request: OutgoingRequest, options: RequestOptions | None) -> FutureIncomingResponse:
    try:
        method = method_name(request.method)
    except ValueError:
        raise Err(Case("HTTP-request-method-invalid")) from None
    try:
        scheme = scheme_name(request.scheme) if request.scheme is not None else "https"
    except ValueError:
        raise Err(Case("HTTP-protocol-error")) from None
    if scheme not in _DEFAULT_PORTS:
        raise Err(Case("HTTP-protocol-error"))  # unsupported scheme, as wasmtime answers
    authority = request.authority
    path = request.path_with_query
    if not authority or path is None:
        raise Err(Case("HTTP-request-URI-invalid"))
    try:
        host, port = parse_authority(authority)
    except ValueError:
        raise Err(Case("HTTP-request-URI-invalid")) from None
    path = path.partition("#")[0]  # a fragment is never sent
    if not path or path.startswith("?"):
        path = "/" + path
    if not path.startswith("/"):
        raise Err(Case("HTTP-request-URI-invalid"))
    if not is_allowed(ctx.config.allowed_outgoing, host, port if port is not None else _DEFAULT_PORTS[scheme]):
        raise Err(Case("HTTP-request-denied"))
    if ctx.http_client is None or ctx.loop is None:
        raise Err(Case("configuration-error"))
    try:
        declared = request.headers.content_length()
    except ValueError:
        raise Err(Case("HTTP-request-length-required")) from None
    body = request.body
    if body is None and declared:
        # Nothing will ever be written, so the declared length cannot be met.
        raise Err(body_size_error(True, 0))

    future = FutureIncomingResponse()
    call = _Call(ctx, future, method, URL(f"{scheme}://{authority}{path}", encoded=True),
                 request.headers, body, options)
    future.cancel = call.cancel
    call.running = asyncio.run_coroutine_threadsafe(call.run(), ctx.loop)
    in_flight: set[concurrent.futures.Future[None]] = ctx.extras.setdefault(_IN_FLIGHT, set())
    in_flight.add(call.running)
    call.running.add_done_callback(in_flight.discard)
    return future


class _Call:
    """One outgoing request on the event loop, from connect to the end of its response body."""

    def __init__(
        self, ctx: WasiCtx, future: FutureIncomingResponse, method: str, url: URL,
        headers: Fields, body: OutgoingBodyChannel | None, options: RequestOptions | None,
    ) -> None:
        self.ctx = ctx
        self.future = future
        self.running: concurrent.futures.Future[None] | None = None
        self.method = method
        self.url = url
        self.headers = CIMultiDict((name, _header_text(value)) for name, value in headers.entries())
        self.body = body
        self.connect_s = _seconds(options.connect_timeout if options else None)
        self.first_byte_s = _seconds(options.first_byte_timeout if options else None)
        self.between_bytes_s = _seconds(options.between_bytes_timeout if options else None)

    def cancel(self) -> None:
        """Stop the request from any thread (the guest dropped what represents it)."""
        if self.running is not None:
            self.running.cancel()  # thread-safe: cancels the task on its loop

    def resolve(self, outcome: IncomingResponse | Case) -> None:
        if self.future.outcome is None:
            self.future.outcome = outcome
            self.ctx.notify()

    def request_failure(self, error: BaseException) -> Case:
        # Our own body error (content-length, guest dropped the body) explains it best.
        if self.body is not None and self.body.pipe.error is not None:
            return error_code_of(self.body.pipe.error, client_error_code(error))
        return client_error_code(error)

    async def run(self) -> None:
        session: aiohttp.ClientSession = self.ctx.http_client
        response: aiohttp.ClientResponse | None = None
        pipe: Pipe | None = None
        failure = Case("connection-terminated")  # why an unsent request body is cut off
        try:
            try:
                response = await session.request(
                    self.method, self.url, headers=self.headers,
                    data=_drain(self.body.pipe) if self.body is not None else None,
                    allow_redirects=False, auto_decompress=False, raise_for_status=False,
                    skip_auto_headers=_SKIP_AUTO_HEADERS,
                    timeout=aiohttp.ClientTimeout(
                        total=None, connect=None, sock_connect=self.connect_s, sock_read=self.first_byte_s,
                    ),
                )
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:
                failure = self.request_failure(error)
                self.resolve(failure)
                return
            connection = response.connection
            if connection is not None and connection.protocol is not None:
                # The body is timed per read below, only while we wait for the peer
                # (not while the guest applies backpressure): stop aiohttp's own timer.
                connection.protocol.read_timeout = None
                connection.protocol.start_timeout()
            pipe = Pipe(asyncio.get_running_loop(), self.ctx.config.pipe_capacity, waker=self.ctx.notify)
            headers = Fields.received((name.decode("latin-1"), value) for name, value in response.raw_headers)
            body = IncomingBody(pipe, release=self.cancel)
            self.resolve(IncomingResponse(response.status, headers, body))
            await self.pump(response, pipe)
        except asyncio.CancelledError:
            if pipe is not None:
                pipe.fail(ConnectionAbortedError("outgoing request cancelled"))
            raise
        finally:
            if response is not None:
                if pipe is not None and pipe.ended and pipe.error is None:
                    response.release()
                else:
                    response.close()
            body_channel = self.body
            if body_channel is not None and not body_channel.pipe.ended and not _fully_sent(body_channel):
                # Nobody sends the rest any more: the guest's writes must fail, not block.
                body_channel.pipe.fail(HttpCodeError(failure, "the request ended before its body was sent"))
            self.resolve(internal_error("outgoing request ended without a response"))

    async def pump(self, response: aiohttp.ClientResponse, pipe: Pipe) -> None:
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(response.content.readany(), self.between_bytes_s)
                except asyncio.TimeoutError:
                    raise HttpCodeError(Case("connection-read-timeout"), "no response data within between-bytes-timeout") from None
                if not chunk:
                    break
                await pipe.feed(chunk)
            pipe.finish()
        except PipeFailed:
            return  # the guest dropped the body; closing the response is enough
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:
            pipe.fail(HttpCodeError(body_error_code(error), str(error) or type(error).__name__))


def _fully_sent(body: OutgoingBodyChannel) -> bool:
    """Every declared byte went out: the peer may answer before the guest calls finish."""
    return body.expected is not None and body.written == body.expected and body.pipe.flushed()


def _header_text(value: bytes) -> str:
    # aiohttp writes header values as UTF-8: decoding as UTF-8 keeps such bytes
    # intact; other obs-text bytes can only be passed on as Latin-1 characters.
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


async def _drain(pipe: Pipe) -> AsyncIterator[bytes]:
    """The guest's request body as aiohttp's streaming request payload."""
    while (chunk := await pipe.drain()) is not None:
        yield chunk


def body_error_code(error: BaseException) -> Case:
    """The error-code for a failure while receiving a response body."""
    if isinstance(error, aiohttp.ClientPayloadError):
        return Case("HTTP-response-incomplete")
    return client_error_code(error)


def client_error_code(error: BaseException) -> Case:
    """Map an aiohttp/OS exception from sending a request to a wasi:http error-code."""
    code = getattr(error, "http_error_code", None)
    if isinstance(code, Case):
        return code
    dns_error_type: Any = getattr(aiohttp, "ClientConnectorDNSError", ())
    connect_timeout_type: Any = getattr(aiohttp, "ConnectionTimeoutError", ())
    if isinstance(error, connect_timeout_type):
        return Case("connection-timeout")
    if isinstance(error, aiohttp.ServerTimeoutError):
        return Case("connection-read-timeout")
    if isinstance(error, asyncio.TimeoutError):
        return Case("connection-timeout")
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return Case("TLS-certificate-error")
    if isinstance(error, aiohttp.ClientSSLError):
        return Case("TLS-protocol-error")
    if isinstance(error, dns_error_type):
        return dns_error()
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, socket.gaierror):
            return dns_error()
        return _os_error_code(error.os_error, Case("connection-refused"))
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return Case("connection-terminated")
    if isinstance(error, aiohttp.ClientPayloadError):
        return Case("HTTP-response-incomplete")
    if isinstance(error, aiohttp.InvalidURL):
        return Case("HTTP-request-URI-invalid")
    if isinstance(error, aiohttp.ClientResponseError):
        return Case("HTTP-protocol-error")  # unparsable response head
    if isinstance(error, OSError):
        return _os_error_code(error, Case("connection-terminated"))
    if isinstance(error, aiohttp.ClientConnectionError):
        return Case("connection-terminated")
    return internal_error(f"{type(error).__name__}: {error}")


def _os_error_code(error: OSError, default: Case) -> Case:
    number = error.errno
    if number == errno.ECONNREFUSED:
        return Case("connection-refused")
    if number in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
        return Case("connection-terminated")
    if number == errno.ETIMEDOUT:
        return Case("connection-timeout")
    if number in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return Case("destination-IP-unroutable")
    if number == errno.EADDRNOTAVAIL:
        return Case("destination-unavailable")
    return default
