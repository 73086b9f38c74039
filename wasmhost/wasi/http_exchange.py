"""The server-facing side of one ``wasi:http/incoming-handler.handle`` call.

Usage (loop = the aiohttp event loop, worker = the thread running the guest)::

    # loop: the server creates and feeds the request body pipe itself
    exchange = HttpExchange(loop, "GET", "http", "example.com:8080", "/path?q=1",
                            [("content-type", b"text/plain"), ...], body_pipe_or_None, config)

    # worker, before calling the guest
    exchange.attach(ctx)                       # body pipe wakes this store
    req, out = exchange.guest_resources()      # IncomingRequest, ResponseOutparam for handle()
    try:
        call_guest_handle(req, out)
    except BaseException as error:
        exchange.guest_returned(error)         # trapped / interrupted
    else:
        exchange.guest_returned(None)

    # loop
    try:
        response = await exchange.response()   # as soon as response-outparam.set is called
    except GuestResponseError as e:  ...       # guest set an error-code (e.error_code)
    except GuestNeverResponded: ...            # returned without setting a response
    except GuestTrapped as e: ...              # trapped before setting one (e.error)
    response.status, response.headers          # int, list[tuple[str, bytes]]
    response.body                              # Pipe to drain (None: empty body)
    response.trailers()                        # after the body's end: list or None

Semantics:

* request headers: names given as ``bytes`` (raw from the wire) are lower-cased;
  they are converted only when the guest asks for them. Forbidden hop-by-hop names (``host``, ``connection``,
  ``transfer-encoding``...) are hidden from the guest, as in wasmtime; a None
  ``authority`` is taken from the ``Host`` header. ``method`` is the wire
  method (case-sensitive); ``scheme`` ``http``/``https``.
* response body: drain ``response.body`` until ``None``; ``PipeFailed``
  means the guest failed it (content-length not met or exceeded, body dropped
  without ``finish``, guest trapped or returned without finishing): abort the
  connection. A declared ``content-length`` is passed on in the headers and
  is exactly what the pipe delivers when it ends normally. A response with no
  body but a non-zero content-length is an error (``GuestResponseError`` with
  ``HTTP-response-body-size``) unless the request is ``HEAD`` or the status
  is 1xx/204/304. If the client goes away, ``response.body.abort(error)``
  makes the guest's writes fail.
* ``guest_returned``: settles ``response()`` if the guest never set one,
  fails an unfinished response body, fails the request body pipe if the guest
  did not read it all (so the server stops feeding it), and cancels the
  guest's outgoing requests still running.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Sequence, Union

from .ctx import WasiConfig, WasiCtx
from .http_body import IncomingBody, OutgoingBodyChannel, pipe_done
from .http_errors import HttpCodeError, internal_error
from .http_outgoing import cancel_in_flight
from .http_types import IncomingRequest, OutgoingResponse, ResponseOutparam, method_case, scheme_case
from .interface import Case, HostInterface
from .pipe import Pipe
from .wakeups import call_soon_threadsafe

INTERFACES: tuple[HostInterface, ...] = ()

# Responses that carry no body whatever their content-length says (RFC 9110 6.4.1).
_BODYLESS_STATUSES = frozenset({204, 304})


def _is_host(name: str | bytes) -> bool:
    return (name.decode("latin-1") if isinstance(name, bytes) else name).lower() == "host"


class GuestHttpError(Exception):
    """The guest produced no usable response."""


class GuestResponseError(GuestHttpError):
    """The guest answered with an error-code (``response-outparam.set(err)``) or an invalid response."""

    def __init__(self, error_code: Case) -> None:
        super().__init__(f"guest responded with error {error_code!r}")
        self.error_code = error_code


class GuestNeverResponded(GuestHttpError):
    def __init__(self) -> None:
        super().__init__("guest never invoked `response-outparam.set`")


class GuestTrapped(GuestHttpError):
    def __init__(self, error: BaseException) -> None:
        super().__init__(f"guest trapped before responding: {error}")
        self.error = error


@dataclass(slots=True)  # one per request: no per-instance __dict__
class GuestResponse:
    status: int
    headers: list[tuple[str, bytes]]
    body: Pipe | None
    channel: OutgoingBodyChannel | None = None

    def trailers(self) -> list[tuple[str, bytes]] | None:
        """The trailers given to ``outgoing-body.finish`` (valid once the body ended)."""
        return self.channel.trailers if self.channel is not None else None


def _late_response(value: Union[OutgoingResponse, Case]) -> None:
    """``response-outparam.set`` after its request is over: nobody will read that response."""
    if isinstance(value, OutgoingResponse) and value.body is not None:
        value.body.pipe.abort(HttpCodeError(Case("connection-terminated"), "the request this response was for is over"))


class HttpExchange:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        method: str,
        scheme: str,
        authority: str | None,
        path_with_query: str,
        headers: Sequence[tuple[str | bytes, bytes]],
        body: Pipe | None,
        config: WasiConfig,
    ) -> None:
        self.loop = loop
        self.config = config
        self.method = method
        if authority is None:
            authority = next((v.decode("latin-1") for n, v in headers if _is_host(n)), None)
        if body is None:
            body = Pipe(loop, config.pipe_capacity)
            body.finish()
        self.body_pipe = body
        self.request = IncomingRequest(
            method_case(method), scheme_case(scheme), authority, path_with_query,
            headers, IncomingBody(body),
        )
        self.outparam = ResponseOutparam(self._deliver)
        self._result: asyncio.Future[GuestResponse] = loop.create_future()
        self._lock = threading.Lock()
        self._settled = False
        self._channel: OutgoingBodyChannel | None = None
        self._ctx: WasiCtx | None = None

    # -- worker side -------------------------------------------------------------------
    def attach(self, ctx: WasiCtx) -> None:
        self._ctx = ctx
        self.body_pipe.waker = ctx.notify

    def guest_resources(self) -> tuple[IncomingRequest, ResponseOutparam]:
        return self.request, self.outparam

    def guest_returned(self, error: BaseException | None) -> None:
        if not self._settled:  # usually settled by now: skip building the exception
            self._settle(GuestTrapped(error) if error is not None else GuestNeverResponded())
        # exchange -> outparam -> self._deliver -> exchange is a reference cycle: without
        # this, every request's objects would wait for the cyclic GC (~20 us per request).
        # A guest that kept the outparam and sets it later reaches _late_response.
        self.outparam.deliver = _late_response
        channel = self._channel
        if channel is not None and not channel.pipe.ended:
            reason = f"guest trapped: {error}" if error is not None else "guest returned without finishing the body"
            channel.fail(internal_error(reason), reason)
        if not pipe_done(self.body_pipe):
            self.body_pipe.fail(ConnectionAbortedError("the guest is done and did not read the whole request body"))
        if self._ctx is not None:
            cancel_in_flight(self._ctx)

    def _deliver(self, value: Union[OutgoingResponse, Case]) -> None:
        """``response-outparam.set``: ``value`` is the response or the guest's error-code."""
        if isinstance(value, Case):
            self._settle(GuestResponseError(value))
            return
        channel = value.body
        if channel is None and not self._may_omit_body(value):
            self._settle(GuestResponseError(Case("HTTP-response-body-size", 0)))
            return
        self._channel = channel
        self._settle(GuestResponse(value.status, value.headers.entries(), channel.pipe if channel else None, channel))

    def _may_omit_body(self, response: OutgoingResponse) -> bool:
        if self.method == "HEAD" or response.status < 200 or response.status in _BODYLESS_STATUSES:
            return True
        try:
            return not response.headers.content_length()
        except ValueError:
            return False

    def _settle(self, outcome: Union[GuestResponse, BaseException]) -> None:
        with self._lock:
            if self._settled:
                return
            self._settled = True
        call_soon_threadsafe(self.loop, self._complete, outcome)

    # -- loop side ---------------------------------------------------------------------
    def _complete(self, outcome: Union[GuestResponse, BaseException]) -> None:
        if self._result.done():  # the server stopped waiting (cancelled)
            if isinstance(outcome, GuestResponse) and outcome.body is not None:
                outcome.body.abort(HttpCodeError(Case("connection-terminated"), "nobody waits for the response"))
            return
        if isinstance(outcome, BaseException):
            self._result.set_exception(outcome)
        else:
            self._result.set_result(outcome)

    def response(self) -> "asyncio.Future[GuestResponse]":
        """Awaitable: the guest's response (a future, not a coroutine: one object less per request)."""
        return self._result
