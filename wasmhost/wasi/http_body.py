"""wasi:http/types bodies: ``incoming-body``, ``future-trailers``, ``outgoing-body``.

Every body is a :class:`Pipe` between the event loop and the guest's worker
thread:

* an incoming body (request from the client, response from an outgoing
  request) is fed by the loop and read by the guest through an
  :class:`IncomingBodyStream`; ``finish`` turns it into
  :class:`FutureTrailers`, ready once the rest of the body has arrived (it
  discards what the guest did not read, as wasmtime does);
* an outgoing body (response to the client, body of an outgoing request) is
  written by the guest through an :class:`OutgoingBodyStream` and drained by
  the loop; the consumer sees it as an :class:`OutgoingBodyChannel`. A
  declared ``content-length`` is enforced: writing past it fails the write and
  the pipe, and ``finish`` with fewer bytes fails with the body-size
  error-code (payload: bytes written). Dropping the body without ``finish``
  fails the pipe, so the consumer aborts instead of sending a truncated body.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .ctx import WasiCtx
from .http_errors import HttpCodeError, body_size_error, error_code_of, internal_error
from .http_fields import Entries, Fields
from .http_interface import types_interface
from .interface import Case, Err, HostInterface, HostResource, Ok, Trap
from .io_error import stream_failed
from .io_poll import Pollable
from .io_streams import PipeInputStream, PipeOutputStream, StreamError
if TYPE_CHECKING:
    from .http_response import IncomingResponse
    from .http_types import IncomingRequest
from .pipe import Pipe, PipeClosed, PipeFailed

INTERFACES: tuple[HostInterface, ...] = ()

# Largest piece future-trailers discards per pipe read while skipping a body.
_DISCARD_CHUNK = 1 << 20


def pipe_done(pipe: Pipe) -> bool:
    """The reader has seen everything: the pipe ended and is empty, or it failed."""
    return pipe.exhausted()


def new_body_pipe(ctx: WasiCtx) -> Pipe:
    """A pipe between this store's worker and the event loop, waking the store."""
    if ctx.loop is None:
        raise Trap("wasi:http needs an event loop attached to the store")
    return Pipe(ctx.loop, ctx.config.pipe_capacity, waker=ctx.notify)


# -- incoming bodies -----------------------------------------------------------------

def consume_body(message: "IncomingRequest | IncomingResponse") -> "IncomingBody":
    """``consume`` of an incoming request or response: the body once, ``Err`` after."""
    body, message.body = message.body, None
    if body is None:
        raise Err(None)
    return body


@types_interface.resource("incoming-body")
class IncomingBody(HostResource):
    """A received body. ``trailers`` returns the trailers once the pipe ended
    (None: there were none); ``release`` tells the producer nobody will read on."""

    __slots__ = ("pipe", "trailers", "release", "stream_taken", "stream_alive", "dropped")

    def __init__(
        self,
        pipe: Pipe,
        trailers: Callable[[], Entries | None] | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.pipe = pipe
        self.trailers = trailers
        self.release = release
        self.stream_taken = False
        self.stream_alive = False
        self.dropped = False

    def abandon(self) -> None:
        """Nobody will read the rest: fail the pipe so its feeder stops, free the producer."""
        if not pipe_done(self.pipe):
            self.pipe.fail(ConnectionAbortedError("body dropped by the guest before its end"))
        release, self.release = self.release, None
        if release is not None:
            release()

    def stream_dropped(self) -> None:
        self.stream_alive = False
        if self.dropped:
            self.abandon()

    def on_drop(self) -> None:
        self.dropped = True
        # A still-open stream keeps reading; it abandons the body when it goes.
        if not self.stream_alive:
            self.abandon()


class IncomingBodyStream(PipeInputStream):
    """The ``input-stream`` child of an incoming body."""

    __slots__ = ("body",)

    def __init__(self, body: IncomingBody) -> None:
        super().__init__(body.pipe)
        self.body = body

    def on_drop(self) -> None:
        # Unlike a plain pipe stream, the body (or its future-trailers) decides.
        self.body.stream_dropped()


@types_interface.resource("future-trailers")
class FutureTrailers(HostResource):
    __slots__ = ("body", "consumed")

    def __init__(self, body: IncomingBody) -> None:
        self.body = body
        self.consumed = False

    def is_ready(self) -> bool:
        """True once the body has fully arrived or failed; skips unread data meanwhile."""
        pipe = self.body.pipe
        if pipe.error is not None:
            return True
        try:
            while pipe.read(_DISCARD_CHUNK):
                pass
        except (PipeClosed, PipeFailed):
            return True
        return False

    def get(self) -> Ok | Err | None:
        if self.consumed:
            return Err(None)
        if not self.is_ready():
            return None
        self.consumed = True
        pipe = self.body.pipe
        if pipe.error is not None:
            return Ok(Err(error_code_of(pipe.error, internal_error(str(pipe.error)))))
        entries = self.body.trailers() if self.body.trailers is not None else None
        return Ok(Ok(Fields.received(entries) if entries is not None else None))

    def on_drop(self) -> None:
        if not pipe_done(self.body.pipe):
            self.body.abandon()


@types_interface.func("[method]incoming-body.stream")
def incoming_body_stream(ctx: WasiCtx, self: IncomingBody) -> IncomingBodyStream:
    if self.stream_taken:
        raise Err(None)
    self.stream_taken = True
    self.stream_alive = True
    return IncomingBodyStream(self)


@types_interface.func("[static]incoming-body.finish")
def incoming_body_finish(ctx: WasiCtx, this: IncomingBody) -> FutureTrailers:
    if this.stream_alive:
        raise Trap("incoming-body.finish: its input-stream child is still alive")
    return FutureTrailers(this)


@types_interface.func("[method]future-trailers.subscribe")
def future_trailers_subscribe(ctx: WasiCtx, self: FutureTrailers) -> Pollable:
    return Pollable(self.is_ready)


@types_interface.func("[method]future-trailers.get")
def future_trailers_get(ctx: WasiCtx, self: FutureTrailers) -> Ok | Err | None:
    return self.get()


# -- outgoing bodies -----------------------------------------------------------------

class OutgoingBodyChannel:
    """What the consumer of an outgoing body sees: the pipe to drain and, after
    its end, the trailers. ``expected`` is the declared content-length."""

    __slots__ = ("pipe", "is_request", "expected", "written", "trailers")

    def __init__(self, pipe: Pipe, is_request: bool, expected: int | None) -> None:
        self.pipe = pipe
        self.is_request = is_request
        self.expected = expected
        self.written = 0
        self.trailers: Entries | None = None

    def size_error(self) -> Case:
        return body_size_error(self.is_request, self.written)

    def fail(self, code: Case, message: str) -> None:
        self.pipe.fail(HttpCodeError(code, message))


class OutgoingBodyStream(PipeOutputStream):
    """The ``output-stream`` child of an outgoing body; counts what is written."""

    __slots__ = ("channel", "body")

    def __init__(self, body: OutgoingBody, max_chunk: int) -> None:
        channel = body.channel
        super().__init__(channel.pipe, max_chunk)
        self.channel = channel
        self.body = body

    def write(self, data: bytes) -> None:
        channel = self.channel
        if channel.expected is not None and channel.written + len(data) > channel.expected:
            # Count the refused bytes too: the error reports what the guest tried
            # to send in total (wasmtime does the same).
            channel.written += len(data)
            code = channel.size_error()
            message = f"body exceeds its content-length of {channel.expected} bytes ({channel.written} written)"
            channel.fail(code, message)
            raise StreamError(stream_failed(message, code))
        super().write(data)
        channel.written += len(data)

    def write_if_ready(self, data: bytes) -> bool:
        channel = self.channel
        if channel.expected is not None and channel.written + len(data) > channel.expected:
            return False  # write() fails the body and reports it
        if not super().write_if_ready(data):
            return False
        channel.written += len(data)
        return True

    def on_drop(self) -> None:
        self.body.stream_alive = False


@types_interface.resource("outgoing-body")
class OutgoingBody(HostResource):
    __slots__ = ("channel", "stream_taken", "stream_alive")

    def __init__(self, channel: OutgoingBodyChannel) -> None:
        self.channel = channel
        self.stream_taken = False
        self.stream_alive = False

    @classmethod
    def for_message(cls, ctx: WasiCtx, headers: Fields, is_request: bool) -> OutgoingBody:
        """The body of a request/response with ``headers``; ValueError on a bad content-length."""
        expected = headers.content_length()
        return cls(OutgoingBodyChannel(new_body_pipe(ctx), is_request, expected))

    def finish(self, trailers: Fields | None) -> None:
        channel = self.channel
        if channel.expected is not None and channel.written != channel.expected:
            code = channel.size_error()
            channel.fail(code, f"body of {channel.written} bytes does not match its content-length of {channel.expected}")
            raise Err(code)
        if trailers is not None:
            channel.trailers = trailers.entries()  # set before the end so the consumer sees them
        channel.pipe.finish()

    def on_drop(self) -> None:
        # Not finished: the consumer must treat the body as incomplete.
        self.channel.fail(Case("HTTP-protocol-error"), "outgoing-body dropped without finish")


@types_interface.func("[method]outgoing-body.write")
def outgoing_body_write(ctx: WasiCtx, self: OutgoingBody) -> OutgoingBodyStream:
    if self.stream_taken:
        raise Err(None)
    self.stream_taken = True
    self.stream_alive = True
    return OutgoingBodyStream(self, ctx.config.max_chunk)


@types_interface.func("[static]outgoing-body.finish")
def outgoing_body_finish(ctx: WasiCtx, this: OutgoingBody, trailers: Fields | None) -> None:
    if this.stream_alive:
        raise Trap("outgoing-body.finish: its output-stream child is still alive")
    this.finish(trailers)
