"""wasi:http/types responses to outgoing requests: ``incoming-response`` and
``future-incoming-response``.

The outgoing-handler resolves a :class:`FutureIncomingResponse` from the event
loop (with an :class:`IncomingResponse` or an error-code) and then wakes the
store. Ownership of the request's network work (``cancel``) moves along with
the objects the guest holds: the future until ``get``, then the response
until ``consume``, then the body (and its future-trailers). Whoever holds it
when the guest drops it stops the request.
"""
from __future__ import annotations

from typing import Callable, Union

from .ctx import WasiCtx
from .http_body import IncomingBody, consume_body
from .http_fields import Fields
from .http_interface import types_interface
from .interface import Case, Err, HostInterface, HostResource, Ok
from .io_poll import Pollable

INTERFACES: tuple[HostInterface, ...] = ()


@types_interface.resource("incoming-response")
class IncomingResponse(HostResource):
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Fields, body: IncomingBody) -> None:
        self.status = status
        self.headers = headers
        self.body: IncomingBody | None = body

    def on_drop(self) -> None:
        # Dropped before consume: nobody will read the body.
        body, self.body = self.body, None
        if body is not None:
            body.abandon()


@types_interface.resource("future-incoming-response")
class FutureIncomingResponse(HostResource):
    """``outcome`` is set once from the event loop: the response head or an error-code."""

    __slots__ = ("outcome", "consumed", "cancel")

    def __init__(self, cancel: Callable[[], None] | None = None) -> None:
        self.outcome: Union[IncomingResponse, Case, None] = None
        self.consumed = False
        # Stops the request (connection, body pumping) when nobody can see it any more.
        self.cancel = cancel

    def is_ready(self) -> bool:
        return self.outcome is not None

    def get(self) -> Ok | Err | None:
        if self.consumed:
            return Err(None)
        outcome = self.outcome
        if outcome is None:
            return None
        self.consumed = True
        if isinstance(outcome, IncomingResponse):
            return Ok(Ok(outcome))  # the response (and its body) now owns the request
        return Ok(Err(outcome))

    def on_drop(self) -> None:
        if not self.consumed:
            cancel, self.cancel = self.cancel, None
            if cancel is not None:
                cancel()


@types_interface.func("[method]incoming-response.status")
def incoming_response_status(ctx: WasiCtx, self: IncomingResponse) -> int:
    return self.status


@types_interface.func("[method]incoming-response.headers")
def incoming_response_headers(ctx: WasiCtx, self: IncomingResponse) -> Fields:
    return self.headers.view()


@types_interface.func("[method]incoming-response.consume")
def incoming_response_consume(ctx: WasiCtx, self: IncomingResponse) -> IncomingBody:
    return consume_body(self)


@types_interface.func("[method]future-incoming-response.subscribe")
def future_incoming_response_subscribe(ctx: WasiCtx, self: FutureIncomingResponse) -> Pollable:
    return Pollable(self.is_ready)


@types_interface.func("[method]future-incoming-response.get")
def future_incoming_response_get(ctx: WasiCtx, self: FutureIncomingResponse) -> Ok | Err | None:
    return self.get()
