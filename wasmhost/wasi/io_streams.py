"""wasi:io/streams: input and output byte streams over pipes and log sinks.

Stream objects never block by themselves: ``read``/``write`` are immediate and
``is_ready`` (which must not block) says whether the next call would make
progress. The ``blocking-*`` functions wait in
``WasiCtx.block_until``, so a request timeout wakes them.
"""
from __future__ import annotations

from typing import Callable

from .ctx import LineSink, WasiCtx
from .interface import Case, Err, HostInterface, HostResource, Trap
from .io_error import STREAM_CLOSED, stream_failed
from .io_poll import Pollable
from .pipe import Pipe, PipeClosed, PipeFailed

streams_interface = HostInterface("wasi:io/streams")

# blocking-write-and-flush and friends accept at most this much per call (spec).
BLOCKING_WRITE_LIMIT = 4096


class StreamError(Exception):
    """Raised by stream implementations; ``value`` is the stream-error Case."""

    def __init__(self, value: Case) -> None:
        super().__init__(value)
        self.value = value


@streams_interface.resource("input-stream")
class InputStream(HostResource):
    """Base input stream: subclasses implement ``read_now`` and ``is_ready``."""

    __slots__ = ()

    def read_now(self, limit: int) -> bytes:
        """Up to ``limit`` bytes without blocking; raise StreamError at the end or on failure."""
        raise NotImplementedError

    def is_ready(self) -> bool:
        """True when ``read_now`` would return data or raise (must not block)."""
        raise NotImplementedError


class EmptyInputStream(InputStream):
    """Stdin of a served guest: closed from the start."""

    __slots__ = ()

    def read_now(self, limit: int) -> bytes:
        raise StreamError(STREAM_CLOSED)

    def is_ready(self) -> bool:
        return True


class PipeInputStream(InputStream):
    """Reads a :class:`Pipe` fed by the event loop (request bodies, response bodies)."""

    __slots__ = ("pipe", "on_end")

    def __init__(self, pipe: Pipe, on_end: Callable[[], None] | None = None) -> None:
        self.pipe = pipe
        # Called once when the end of data is reached (e.g. trailers become available).
        self.on_end = on_end

    def read_now(self, limit: int) -> bytes:
        try:
            return self.pipe.read(limit)
        except PipeClosed:
            if self.on_end is not None:
                on_end, self.on_end = self.on_end, None
                on_end()
            raise StreamError(STREAM_CLOSED) from None
        except PipeFailed as failure:
            raise StreamError(failure_case(failure)) from None

    def is_ready(self) -> bool:
        return self.pipe.readable()

    def on_drop(self) -> None:
        # Nobody will read the rest: let the feeding side stop.
        if not self.pipe.ended:
            self.pipe.fail(ConnectionAbortedError("input stream dropped by the guest"))


def failure_case(failure: PipeFailed) -> Case:
    cause = failure.args[0] if failure.args else failure
    code = getattr(cause, "http_error_code", None)
    return stream_failed(str(cause) or type(cause).__name__, code)


@streams_interface.resource("output-stream")
class OutputStream(HostResource):
    """Base output stream: subclasses implement the non-blocking primitives."""

    __slots__ = ()

    def check_write(self) -> int:
        """Bytes the next ``write`` may take (0: not now); raise StreamError when closed."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Start flushing; ``flushed()`` tells when it is done."""
        return None

    def flushed(self) -> bool:
        return True

    def is_ready(self) -> bool:
        """True when ``check_write`` would return > 0 or raise (must not block)."""
        raise NotImplementedError

    # Fast paths of blocking-write-and-flush; False means "take the general way",
    # which waits and reports errors. Streams without them always take it.
    def write_if_ready(self, data: bytes) -> bool:
        """Write all of ``data`` now if ``check_write`` would permit it (else write nothing)."""
        return False

    def flush_done(self) -> bool:
        """True when a blocking flush would return at once without error."""
        return False


class SinkOutputStream(OutputStream):
    """Guest stdout/stderr: everything goes to a :class:`LineSink` at once."""

    __slots__ = ("sink", "limit")

    def __init__(self, sink: LineSink, limit: int = 1 << 20) -> None:
        self.sink = sink
        self.limit = limit

    def check_write(self) -> int:
        return self.limit

    def write(self, data: bytes) -> None:
        self.sink.write(data)

    def flush(self) -> None:
        self.sink.out.flush()

    def is_ready(self) -> bool:
        return True


class PipeOutputStream(OutputStream):
    """Writes into a :class:`Pipe` drained by the event loop (response and request bodies)."""

    __slots__ = ("pipe", "max_chunk")

    def __init__(self, pipe: Pipe, max_chunk: int = 64 * 1024) -> None:
        self.pipe = pipe
        self.max_chunk = max_chunk

    def check_write(self) -> int:
        try:
            return min(self.pipe.capacity(), self.max_chunk)
        except PipeClosed:
            raise StreamError(STREAM_CLOSED) from None
        except PipeFailed as failure:
            raise StreamError(failure_case(failure)) from None

    def write(self, data: bytes) -> None:
        try:
            self.pipe.write(data)
        except PipeClosed:
            raise StreamError(STREAM_CLOSED) from None
        except PipeFailed as failure:
            raise StreamError(failure_case(failure)) from None

    def flushed(self) -> bool:
        # Data counts as flushed once the pipe holds it within its bound, as in
        # wasmtime where a flush completes when hyper's bounded body channel
        # takes the bytes. Waiting for the event loop to drain it would cost a
        # thread round trip per write.
        return self.pipe.writable()

    def is_ready(self) -> bool:
        return self.pipe.writable()

    def write_if_ready(self, data: bytes) -> bool:
        return len(data) <= self.max_chunk and self.pipe.write_if_room(data)

    def flush_done(self) -> bool:
        # flush() does nothing, flushed() holds and check_write() would not raise.
        return self.pipe.open_below_bound()


# -- wasi:io/streams functions -------------------------------------------------

def _read(stream: InputStream, limit: int) -> bytes:
    try:
        return stream.read_now(limit)
    except StreamError as error:
        raise Err(error.value) from None


def _block_readable(ctx: WasiCtx, stream: InputStream) -> None:
    ctx.block_until(stream.is_ready)


@streams_interface.func("[method]input-stream.read")
def input_read(ctx: WasiCtx, self: InputStream, length: int) -> bytes:
    return _read(self, min(length, ctx.config.max_chunk))


@streams_interface.func("[method]input-stream.blocking-read")
def input_blocking_read(ctx: WasiCtx, self: InputStream, length: int) -> bytes:
    limit = min(length, ctx.config.max_chunk)
    if limit == 0:
        return _read(self, 0)
    while True:
        _block_readable(ctx, self)
        data = _read(self, limit)
        if data:
            return data


@streams_interface.func("[method]input-stream.skip")
def input_skip(ctx: WasiCtx, self: InputStream, length: int) -> int:
    return len(_read(self, min(length, ctx.config.max_chunk)))


@streams_interface.func("[method]input-stream.blocking-skip")
def input_blocking_skip(ctx: WasiCtx, self: InputStream, length: int) -> int:
    return len(input_blocking_read(ctx, self, length))


@streams_interface.func("[method]input-stream.subscribe")
def input_subscribe(ctx: WasiCtx, self: InputStream) -> Pollable:
    return Pollable(self.is_ready)


def _check_write(stream: OutputStream) -> int:
    try:
        return stream.check_write()
    except StreamError as error:
        raise Err(error.value) from None


def _write(stream: OutputStream, data: bytes) -> None:
    try:
        stream.write(data)
    except StreamError as error:
        raise Err(error.value) from None


@streams_interface.func("[method]output-stream.check-write")
def output_check_write(ctx: WasiCtx, self: OutputStream) -> int:
    return _check_write(self)


@streams_interface.func("[method]output-stream.write")
def output_write(ctx: WasiCtx, self: OutputStream, contents: bytes) -> None:
    permit = _check_write(self)
    if len(contents) > permit:
        raise Trap(f"output-stream.write: {len(contents)} bytes exceed the {permit} permitted by check-write")
    _write(self, contents)


def _blocking_flush(ctx: WasiCtx, stream: OutputStream) -> None:
    try:
        stream.flush()
    except StreamError as error:
        raise Err(error.value) from None
    ctx.block_until(stream.flushed)
    _check_write(stream)  # surface a failure that happened while flushing


def _blocking_write(ctx: WasiCtx, stream: OutputStream, data: bytes) -> None:
    # Slicing by offset copies each chunk once (a slice covering all of a bytes
    # object is the object itself), without the cost of a memoryview.
    offset = 0
    while offset < len(data):
        ctx.block_until(stream.is_ready)
        permit = _check_write(stream)
        if permit == 0:
            continue
        chunk = data[offset:offset + permit]
        _write(stream, chunk)
        offset += len(chunk)


@streams_interface.func("[method]output-stream.blocking-write-and-flush")
def output_blocking_write_and_flush(ctx: WasiCtx, self: OutputStream, contents: bytes) -> None:
    if len(contents) > BLOCKING_WRITE_LIMIT:
        raise Trap(f"blocking-write-and-flush: {len(contents)} bytes exceed the {BLOCKING_WRITE_LIMIT}-byte limit")
    # Usually everything fits at once and the stream is flushed right after:
    # do that in two calls; otherwise the general way waits and reports errors
    # (the interruption checks stand for those of block_until).
    if ctx.interrupted is None and self.write_if_ready(contents):
        if ctx.interrupted is None and self.flush_done():
            return
    else:
        _blocking_write(ctx, self, contents)
    _blocking_flush(ctx, self)


@streams_interface.func("[method]output-stream.flush")
def output_flush(ctx: WasiCtx, self: OutputStream) -> None:
    _check_write(self)
    try:
        self.flush()
    except StreamError as error:
        raise Err(error.value) from None


@streams_interface.func("[method]output-stream.blocking-flush")
def output_blocking_flush(ctx: WasiCtx, self: OutputStream) -> None:
    _check_write(self)
    _blocking_flush(ctx, self)


@streams_interface.func("[method]output-stream.subscribe")
def output_subscribe(ctx: WasiCtx, self: OutputStream) -> Pollable:
    return Pollable(self.is_ready)


@streams_interface.func("[method]output-stream.write-zeroes")
def output_write_zeroes(ctx: WasiCtx, self: OutputStream, length: int) -> None:
    output_write(ctx, self, bytes(length))


@streams_interface.func("[method]output-stream.blocking-write-zeroes-and-flush")
def output_blocking_write_zeroes_and_flush(ctx: WasiCtx, self: OutputStream, length: int) -> None:
    output_blocking_write_and_flush(ctx, self, bytes(length))


@streams_interface.func("[method]output-stream.splice")
def output_splice(ctx: WasiCtx, self: OutputStream, src: InputStream, length: int) -> int:
    permit = _check_write(self)
    limit = min(length, permit, ctx.config.max_chunk)
    if limit == 0:
        return 0
    data = _read(src, limit)
    _write(self, data)
    return len(data)


@streams_interface.func("[method]output-stream.blocking-splice")
def output_blocking_splice(ctx: WasiCtx, self: OutputStream, src: InputStream, length: int) -> int:
    limit = min(length, ctx.config.max_chunk)
    if limit == 0:
        return 0
    while True:
        _block_readable(ctx, src)
        data = _read(src, limit)
        if data:
            break
    _blocking_write(ctx, self, data)
    return len(data)
