"""Unit tests for wasi:http (fields, bodies, requests/responses, exchange, outgoing-handler).

Host functions are called directly with a real WasiCtx on a running event
loop; guest-side (worker thread) code runs through ``asyncio.to_thread`` so
its blocking waits go through ``WasiCtx.block_until`` as in production.
"""
from __future__ import annotations

import asyncio
import gc
import socket
import sys
import weakref
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from wasmhost.wasi import http_outgoing, http_types
from wasmhost.wasi.ctx import WasiConfig, WasiCtx
from wasmhost.wasi.http_body import FutureTrailers, IncomingBody, OutgoingBody
from wasmhost.wasi.http_exchange import (
    GuestNeverResponded,
    GuestResponseError,
    GuestTrapped,
    HttpExchange,
)
from wasmhost.wasi.http_fields import FIELDS_SIZE_LIMIT, FORBIDDEN_HEADERS, Fields
from wasmhost.wasi.http_interface import types_interface
from wasmhost.wasi.http_response import FutureIncomingResponse, IncomingResponse
from wasmhost.wasi.http_types import OutgoingRequest, OutgoingResponse, RequestOptions, method_case, scheme_case
from wasmhost.wasi.interface import Case, Err, Ok, Trap
from wasmhost.wasi.io_error import IoError
from wasmhost.wasi.io_streams import (
    input_blocking_read,
    output_blocking_flush,
    output_blocking_write_and_flush,
    output_check_write,
    output_write,
)
from wasmhost.wasi.pipe import Pipe, PipeFailed

T = types_interface.functions
handle = http_outgoing.outgoing_handler_interface.functions["handle"]

INVALID_SYNTAX = Case("invalid-syntax")
FORBIDDEN = Case("forbidden")
IMMUTABLE = Case("immutable")


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def make_ctx(client: aiohttp.ClientSession | None = None, allowed: frozenset[str] = frozenset(), **config: Any) -> WasiCtx:
    return WasiCtx(
        WasiConfig(allowed_outgoing=allowed, **config),
        asyncio.get_running_loop(),
        http_client=client,
    )


@pytest.fixture
async def ctx() -> WasiCtx:
    return make_ctx(pipe_capacity=64, max_chunk=32)


def err_of(fn: Callable[..., Any], *args: Any) -> Any:
    with pytest.raises(Err) as raised:
        fn(*args)
    return raised.value.value


# -- guest-side helpers (run on a worker thread) -------------------------------------

def read_all(ctx: WasiCtx, stream: Any) -> bytes:
    out = bytearray()
    while True:
        try:
            out += input_blocking_read(ctx, stream, 65536)
        except Err as error:
            if error.value == Case("closed"):
                return bytes(out)
            raise


def write_all(ctx: WasiCtx, stream: Any, data: bytes) -> None:
    for start in range(0, len(data), 4096):
        output_blocking_write_and_flush(ctx, stream, data[start:start + 4096])


def fields(*entries: tuple[str, bytes]) -> Fields:
    return T["[static]fields.from-list"](None, list(entries))


async def drain_all(pipe: Pipe) -> bytes:
    out = bytearray()
    while (chunk := await pipe.drain()) is not None:
        out += chunk
    return bytes(out)


# -- fields ----------------------------------------------------------------------------

def test_fields_get_is_case_insensitive_and_keeps_repeated_names_in_order() -> None:
    f = fields(("Content-Type", b"text/plain"), ("X-A", b"1"), ("x-b", b""), ("x-a", b"2"))
    assert T["[method]fields.get"](None, f, "x-a") == [b"1", b"2"]
    assert T["[method]fields.get"](None, f, "X-B") == [b""]
    assert T["[method]fields.get"](None, f, "missing") == []
    assert T["[method]fields.has"](None, f, "CONTENT-TYPE")
    assert not T["[method]fields.has"](None, f, "x-c")
    assert T["[method]fields.entries"](None, f) == [
        ("Content-Type", b"text/plain"), ("X-A", b"1"), ("x-b", b""), ("x-a", b"2"),
    ]


def test_fields_set_replaces_in_place_and_delete_removes_all() -> None:
    f = fields(("a", b"1"), ("X-Dup", b"x"), ("b", b"2"), ("x-dup", b"y"))
    T["[method]fields.set"](None, f, "x-DUP", [b"p", b"q"])
    assert T["[method]fields.entries"](None, f) == [("a", b"1"), ("x-DUP", b"p"), ("x-DUP", b"q"), ("b", b"2")]
    T["[method]fields.set"](None, f, "new", [b"n"])
    assert T["[method]fields.entries"](None, f)[-1] == ("new", b"n")
    T["[method]fields.set"](None, f, "a", [])
    assert not T["[method]fields.has"](None, f, "a")
    T["[method]fields.append"](None, f, "b", b"3")
    T["[method]fields.delete"](None, f, "B")
    T["[method]fields.delete"](None, f, "absent")
    assert T["[method]fields.entries"](None, f) == [("x-DUP", b"p"), ("x-DUP", b"q"), ("new", b"n")]


@pytest.mark.parametrize("name", ["bad header", "", "a:b", "ä", "x\n", "(x)"])
def test_fields_invalid_names(name: str) -> None:
    f = T["[constructor]fields"](None)
    assert err_of(T["[method]fields.append"], None, f, name, b"v") == INVALID_SYNTAX
    assert err_of(T["[method]fields.set"], None, f, name, [b"v"]) == INVALID_SYNTAX
    assert err_of(T["[method]fields.delete"], None, f, name) == INVALID_SYNTAX
    assert err_of(T["[static]fields.from-list"], None, [(name, b"v")]) == INVALID_SYNTAX
    assert T["[method]fields.get"](None, f, name) == []
    assert T["[method]fields.has"](None, f, name) is False


@pytest.mark.parametrize("value", [b"bad\nvalue", b"a\rb", b"nul\x00", b"del\x7f", b" lead", b"trail\t", b"\x01"])
def test_fields_invalid_values(value: bytes) -> None:
    f = T["[constructor]fields"](None)
    assert err_of(T["[method]fields.append"], None, f, "ok-name", value) == INVALID_SYNTAX
    assert err_of(T["[method]fields.set"], None, f, "ok-name", [b"fine", value]) == INVALID_SYNTAX
    assert err_of(T["[static]fields.from-list"], None, [("ok-name", value)]) == INVALID_SYNTAX
    assert T["[method]fields.entries"](None, f) == []


def test_fields_valid_values_and_content_length_digits() -> None:
    f = fields(("a", b""), ("b", b"inner  space\tand tab"), ("c", b"obs-text \xe9\xff"), ("d", b"!~"))
    assert len(T["[method]fields.entries"](None, f)) == 4
    T["[method]fields.append"](None, f, "Content-Length", b"123")
    for bad in (b"+5", b"-5", b" 5", b"", b"5x"):
        assert err_of(T["[method]fields.append"], None, f, "content-length", bad) == INVALID_SYNTAX


@pytest.mark.parametrize("name", sorted(FORBIDDEN_HEADERS) + ["Host", "CONNECTION", "Transfer-Encoding"])
def test_fields_forbidden_names(name: str) -> None:
    f = T["[constructor]fields"](None)
    assert err_of(T["[method]fields.append"], None, f, name, b"v") == FORBIDDEN
    assert err_of(T["[method]fields.set"], None, f, name, [b"v"]) == FORBIDDEN
    assert err_of(T["[method]fields.delete"], None, f, name) == FORBIDDEN
    assert err_of(T["[static]fields.from-list"], None, [("ok", b"1"), (name, b"v")]) == FORBIDDEN


def test_request_and_response_headers_are_immutable_and_clone_is_mutable() -> None:
    h = fields(("x-a", b"1"))
    req = T["[constructor]outgoing-request"](None, h)
    for owner, getter in ((req, "[method]outgoing-request.headers"),
                          (T["[constructor]outgoing-response"](None, fields(("x-a", b"1"))), "[method]outgoing-response.headers")):
        view = T[getter](None, owner)
        assert err_of(T["[method]fields.set"], None, view, "content-length", [b"10"]) == IMMUTABLE
        assert err_of(T["[method]fields.append"], None, view, "x-a", b"2") == IMMUTABLE
        assert err_of(T["[method]fields.delete"], None, view, "x-a") == IMMUTABLE
        # Checks come in wasmtime's order: syntax and forbidden names before immutability.
        assert err_of(T["[method]fields.delete"], None, view, "host") == FORBIDDEN
        assert err_of(T["[method]fields.delete"], None, view, "bad name") == INVALID_SYNTAX
        copy = T["[method]fields.clone"](None, view)
        T["[method]fields.append"](None, copy, "x-a", b"2")
        assert T["[method]fields.get"](None, copy, "x-a") == [b"1", b"2"]
        assert T["[method]fields.get"](None, T[getter](None, owner), "x-a") == [b"1"]


def test_fields_size_limit_traps() -> None:
    f = T["[constructor]fields"](None)
    with pytest.raises(Trap):
        for i in range(FIELDS_SIZE_LIMIT):
            T["[method]fields.append"](None, f, f"x-{i}", b"v" * 1000)
    assert sum(len(v) for _, v in T["[method]fields.entries"](None, f)) < FIELDS_SIZE_LIMIT


# -- method, scheme, request/response accessors -----------------------------------------

@pytest.mark.parametrize(("wire", "case"), [
    ("GET", Case("get")), ("HEAD", Case("head")), ("POST", Case("post")), ("PUT", Case("put")),
    ("DELETE", Case("delete")), ("CONNECT", Case("connect")), ("OPTIONS", Case("options")),
    ("TRACE", Case("trace")), ("PATCH", Case("patch")), ("PURGE", Case("other", "PURGE")),
    ("get", Case("other", "get")),
])
def test_method_mapping(wire: str, case: Case) -> None:
    assert method_case(wire) == case
    assert http_types.method_name(case) == wire


def test_scheme_mapping() -> None:
    assert scheme_case("http") == Case("HTTP")
    assert scheme_case("HTTPS") == Case("HTTPS")
    assert scheme_case("ws") == Case("other", "ws")


def test_outgoing_request_defaults_and_setter_validation() -> None:
    req = T["[constructor]outgoing-request"](None, T["[constructor]fields"](None))
    assert T["[method]outgoing-request.method"](None, req) == Case("get")
    for getter in ("path-with-query", "scheme", "authority"):
        assert T[f"[method]outgoing-request.{getter}"](None, req) is None
    setm = T["[method]outgoing-request.set-method"]
    assert err_of(setm, None, req, Case("other", "bad\nmethod")) is None
    assert err_of(setm, None, req, Case("other", "invalid method")) is None
    setm(None, req, Case("other", "PURGE"))
    assert T["[method]outgoing-request.method"](None, req) == Case("other", "PURGE")
    seta = T["[method]outgoing-request.set-authority"]
    for good in ("example.com", "example.com:443", "127.0.0.1:80", "[::]", "[::]:443", "[2001:db8::1]:8080", "u:p@h:1"):
        seta(None, req, good)
        assert T["[method]outgoing-request.authority"](None, req) == good
    for bad in ("bad-\nhost", "example.com:", "example.com:abc", "localhost:99999", "[::1]:x", "", "a b", "h/p"):
        assert err_of(seta, None, req, bad) is None, bad
    seta(None, req, None)
    sets = T["[method]outgoing-request.set-scheme"]
    assert err_of(sets, None, req, Case("other", "bad\nscheme")) is None
    sets(None, req, Case("other", "ws"))
    sets(None, req, Case("HTTPS"))
    assert T["[method]outgoing-request.scheme"](None, req) == Case("HTTPS")
    setp = T["[method]outgoing-request.set-path-with-query"]
    for bad in ("/bad\npath", "/a b", "/\u00e9", "/del\x7f"):
        assert err_of(setp, None, req, bad) is None
    for good in ("", "/frag#x", "*"):
        setp(None, req, good)
    setp(None, req, "/a/b?c=d&e=%20")
    assert T["[method]outgoing-request.path-with-query"](None, req) == "/a/b?c=d&e=%20"


def test_outgoing_response_status_validation() -> None:
    resp = T["[constructor]outgoing-response"](None, T["[constructor]fields"](None))
    assert T["[method]outgoing-response.status-code"](None, resp) == 200
    for bad in (0, 99, 1000, 65535):
        assert err_of(T["[method]outgoing-response.set-status-code"], None, resp, bad) is None
    for good in (100, 404, 599, 999):
        T["[method]outgoing-response.set-status-code"](None, resp, good)
        assert T["[method]outgoing-response.status-code"](None, resp) == good


def test_request_options_roundtrip() -> None:
    opts = T["[constructor]request-options"](None)
    for name in ("connect-timeout", "first-byte-timeout", "between-bytes-timeout"):
        assert T[f"[method]request-options.{name}"](None, opts) is None
        T[f"[method]request-options.set-{name}"](None, opts, 1_500_000)
        assert T[f"[method]request-options.{name}"](None, opts) == 1_500_000
        T[f"[method]request-options.set-{name}"](None, opts, None)
        assert T[f"[method]request-options.{name}"](None, opts) is None


def test_http_error_code_reads_the_io_error() -> None:
    assert T["http-error-code"](None, IoError("x")) is None
    code = Case("DNS-error", {"rcode": None, "info-code": None})
    assert T["http-error-code"](None, IoError("x", code)) == code


# -- outgoing bodies ----------------------------------------------------------------

async def test_body_and_write_can_be_taken_once(ctx: WasiCtx) -> None:
    resp = T["[constructor]outgoing-response"](ctx, T["[constructor]fields"](ctx))
    body = T["[method]outgoing-response.body"](ctx, resp)
    assert err_of(T["[method]outgoing-response.body"], ctx, resp) is None
    stream = T["[method]outgoing-body.write"](ctx, body)
    assert err_of(T["[method]outgoing-body.write"], ctx, body) is None
    # finish while the child stream is alive traps, as the WIT says
    with pytest.raises(Trap):
        T["[static]outgoing-body.finish"](ctx, body, None)
    stream.on_drop()
    T["[static]outgoing-body.finish"](ctx, body, None)
    assert await drain_all(resp.body.pipe) == b""


async def test_conflicting_content_length_refuses_the_body(ctx: WasiCtx) -> None:
    req = T["[constructor]outgoing-request"](ctx, fields(("content-length", b"5"), ("content-length", b"6")))
    assert err_of(T["[method]outgoing-request.body"], ctx, req) is None


async def test_content_length_too_many_bytes_fails_the_write_and_finish(ctx: WasiCtx) -> None:
    req = T["[constructor]outgoing-request"](ctx, fields(("Content-Length", b"11")))
    body = T["[method]outgoing-request.body"](ctx, req)
    stream = T["[method]outgoing-body.write"](ctx, body)
    consumer = asyncio.ensure_future(drain_all(req.body.pipe))

    def guest() -> Any:
        error = err_of(output_blocking_write_and_flush, ctx, stream, b"more than 11 bytes")
        stream.on_drop()
        return error, err_of(T["[static]outgoing-body.finish"], ctx, body, None)

    stream_error, finish_error = await asyncio.to_thread(guest)
    assert stream_error.tag == "last-operation-failed"
    assert T["http-error-code"](ctx, stream_error.payload) == Case("HTTP-request-body-size", 18)
    assert finish_error == Case("HTTP-request-body-size", 18)
    with pytest.raises(PipeFailed):
        await consumer


async def test_content_length_too_few_bytes_fails_finish(ctx: WasiCtx) -> None:
    resp = T["[constructor]outgoing-response"](ctx, fields(("content-length", b"11")))
    body = T["[method]outgoing-response.body"](ctx, resp)
    stream = T["[method]outgoing-body.write"](ctx, body)
    consumer = asyncio.ensure_future(drain_all(resp.body.pipe))

    def guest() -> Any:
        output_blocking_write_and_flush(ctx, stream, b"msg")
        stream.on_drop()
        return err_of(T["[static]outgoing-body.finish"], ctx, body, None)

    assert await asyncio.to_thread(guest) == Case("HTTP-response-body-size", 3)
    with pytest.raises(PipeFailed) as raised:
        await consumer
    assert raised.value.args[0].http_error_code == Case("HTTP-response-body-size", 3)


async def test_content_length_exact_body_with_backpressure_and_trailers(ctx: WasiCtx) -> None:
    data = bytes(range(256)) * 40  # far more than the 64-byte pipe
    resp = T["[constructor]outgoing-response"](ctx, fields(("content-length", str(len(data)).encode())))
    body = T["[method]outgoing-response.body"](ctx, resp)
    consumer = asyncio.ensure_future(drain_all(resp.body.pipe))

    def guest() -> None:
        stream = T["[method]outgoing-body.write"](ctx, body)
        write_all(ctx, stream, data)
        output_blocking_flush(ctx, stream)
        stream.on_drop()
        T["[static]outgoing-body.finish"](ctx, body, fields(("x-checksum", b"abc")))

    await asyncio.to_thread(guest)
    assert await consumer == data
    assert resp.body.trailers == [("x-checksum", b"abc")]


async def test_dropping_an_unfinished_body_fails_its_pipe(ctx: WasiCtx) -> None:
    resp = T["[constructor]outgoing-response"](ctx, T["[constructor]fields"](ctx))
    body = T["[method]outgoing-response.body"](ctx, resp)
    stream = T["[method]outgoing-body.write"](ctx, body)
    output_write(ctx, stream, b"partial")
    stream.on_drop()
    body.on_drop()
    assert await resp.body.pipe.drain() == b"partial"
    with pytest.raises(PipeFailed):
        await resp.body.pipe.drain()


async def test_a_body_whose_reader_left_is_closed_to_the_writer_not_failed(ctx: WasiCtx) -> None:
    """The server aborts a response body when its client goes away: the guest's
    stream then reports ``closed``, as wasmtime's does when hyper dropped the body."""
    resp = T["[constructor]outgoing-response"](ctx, T["[constructor]fields"](ctx))
    body = T["[method]outgoing-response.body"](ctx, resp)
    stream = T["[method]outgoing-body.write"](ctx, body)
    output_write(ctx, stream, b"never read")
    resp.body.pipe.abort(ConnectionAbortedError("client disconnected"))
    for call in (lambda: output_check_write(ctx, stream), lambda: output_write(ctx, stream, b"more")):
        with pytest.raises(Err) as refused:
            call()
        assert refused.value.value == Case("closed")
    assert resp.body.pipe.flushed()  # nothing left waiting for a reader
    with pytest.raises(PipeFailed):  # the reader side sees why
        await resp.body.pipe.drain()


# -- exchange: incoming request and the response ---------------------------------------

def new_exchange(ctx: WasiCtx, method: str = "GET", body: Pipe | None = None, **kw: Any) -> HttpExchange:
    exchange = HttpExchange(
        ctx.loop, method, kw.get("scheme", "http"), kw.get("authority"), kw.get("path", "/p?q=1"),
        kw.get("headers", [("Host", b"example.com:8080"), ("Connection", b"keep-alive"), ("X-A", b"1")]),
        body, ctx.config,
    )
    exchange.attach(ctx)
    return exchange


async def test_a_finished_exchange_is_freed_without_the_cyclic_gc(ctx: WasiCtx) -> None:
    exchange = new_exchange(ctx)
    _, out = exchange.guest_resources()
    resp = T["[constructor]outgoing-response"](ctx, T["[constructor]fields"](ctx))
    body = T["[method]outgoing-response.body"](ctx, resp)
    T["[static]response-outparam.set"](ctx, out, Ok(resp))
    T["[static]outgoing-body.finish"](ctx, body, None)
    exchange.guest_returned(None)
    response = await exchange.response()
    assert response.status == 200
    freed = weakref.ref(exchange)
    gc.disable()  # only reference counting may free it
    try:
        del exchange, out, resp, body, response
        assert freed() is None
    finally:
        gc.enable()


async def test_outparam_set_after_the_request_is_over_goes_nowhere(ctx: WasiCtx) -> None:
    exchange = new_exchange(ctx)
    _, out = exchange.guest_resources()
    exchange.guest_returned(None)  # the guest returned without responding (it kept `out`)
    with pytest.raises(GuestNeverResponded):
        await exchange.response()
    resp = T["[constructor]outgoing-response"](ctx, T["[constructor]fields"](ctx))
    body = T["[method]outgoing-response.body"](ctx, resp)
    T["[static]response-outparam.set"](ctx, out, Ok(resp))
    assert resp.body.pipe.exhausted()  # failed: nobody reads it, writes cannot pile up


async def test_incoming_request_accessors(ctx: WasiCtx) -> None:
    req, _ = new_exchange(ctx, "PURGE").guest_resources()
    assert T["[method]incoming-request.method"](ctx, req) == Case("other", "PURGE")
    assert T["[method]incoming-request.scheme"](ctx, req) == Case("HTTP")
    assert T["[method]incoming-request.authority"](ctx, req) == "example.com:8080"
    assert T["[method]incoming-request.path-with-query"](ctx, req) == "/p?q=1"
    headers = T["[method]incoming-request.headers"](ctx, req)
    assert T["[method]fields.entries"](ctx, headers) == [("X-A", b"1")]  # host/connection hidden
    assert err_of(T["[method]fields.append"], ctx, headers, "x-b", b"2") == IMMUTABLE
    req2, _ = new_exchange(ctx, "GET", scheme="https", authority="a.test").guest_resources()
    assert T["[method]incoming-request.method"](ctx, req2) == Case("get")
    assert T["[method]incoming-request.scheme"](ctx, req2) == Case("HTTPS")
    assert T["[method]incoming-request.authority"](ctx, req2) == "a.test"


async def test_incoming_body_consume_once_stream_once_and_trailers(ctx: WasiCtx) -> None:
    pipe = Pipe(ctx.loop, 64)
    req, _ = new_exchange(ctx, "POST", pipe).guest_resources()
    payload = b"x" * 1000

    async def feed() -> None:
        for i in range(0, len(payload), 100):
            await pipe.feed(payload[i:i + 100])
        pipe.finish()

    feeder = asyncio.ensure_future(feed())

    def guest() -> tuple[bytes, Any, Any]:
        body = T["[method]incoming-request.consume"](ctx, req)
        assert err_of(T["[method]incoming-request.consume"], ctx, req) is None
        stream = T["[method]incoming-body.stream"](ctx, body)
        assert err_of(T["[method]incoming-body.stream"], ctx, body) is None
        data = read_all(ctx, stream)
        with pytest.raises(Trap):
            T["[static]incoming-body.finish"](ctx, body)  # stream still alive
        stream.on_drop()
        trailers = T["[static]incoming-body.finish"](ctx, body)
        T["[method]future-trailers.subscribe"](ctx, trailers).block(ctx)
        return data, T["[method]future-trailers.get"](ctx, trailers), T["[method]future-trailers.get"](ctx, trailers)

    data, first, second = await asyncio.to_thread(guest)
    await feeder
    assert data == payload
    assert first == Ok(Ok(None))
    assert second == Err(None)


async def test_future_trailers_skip_unread_body_and_report_failure(ctx: WasiCtx) -> None:
    pipe = Pipe(ctx.loop, 16)
    req, _ = new_exchange(ctx, "POST", pipe).guest_resources()
    body = T["[method]incoming-request.consume"](ctx, req)
    trailers = T["[static]incoming-body.finish"](ctx, body)
    assert T["[method]future-trailers.get"](ctx, trailers) is None

    async def feed() -> None:
        for _ in range(20):
            await pipe.feed(b"y" * 16)  # only progresses because future-trailers discards
        pipe.fail(ConnectionResetError("client went away"))

    feeder = asyncio.ensure_future(feed())
    await asyncio.to_thread(lambda: T["[method]future-trailers.subscribe"](ctx, trailers).block(ctx))
    await feeder
    assert T["[method]future-trailers.get"](ctx, trailers) == Ok(Err(Case("connection-terminated")))


async def test_exchange_delivers_the_response_and_body(ctx: WasiCtx) -> None:
    exchange = new_exchange(ctx)
    _, out = exchange.guest_resources()

    def guest() -> None:
        resp = T["[constructor]outgoing-response"](ctx, fields(("content-type", b"text/plain"), ("content-length", b"5")))
        T["[method]outgoing-response.set-status-code"](ctx, resp, 201)
        body = T["[method]outgoing-response.body"](ctx, resp)
        T["[static]response-outparam.set"](ctx, out, Ok(resp))
        stream = T["[method]outgoing-body.write"](ctx, body)
        output_blocking_write_and_flush(ctx, stream, b"hello")
        stream.on_drop()
        T["[static]outgoing-body.finish"](ctx, body, fields(("x-t", b"1")))
        exchange.guest_returned(None)

    worker = asyncio.ensure_future(asyncio.to_thread(guest))
    response = await exchange.response()
    assert response.status == 201
    assert response.headers == [("content-type", b"text/plain"), ("content-length", b"5")]
    assert await drain_all(response.body) == b"hello"
    await worker
    assert response.trailers() == [("x-t", b"1")]


async def test_exchange_response_without_body(ctx: WasiCtx) -> None:
    exchange = new_exchange(ctx)
    _, out = exchange.guest_resources()
    T["[static]response-outparam.set"](ctx, out, Ok(T["[constructor]outgoing-response"](ctx, T["[constructor]fields"](ctx))))
    exchange.guest_returned(None)
    response = await exchange.response()
    assert (response.status, response.body, response.trailers()) == (200, None, None)


async def test_exchange_content_length_without_body(ctx: WasiCtx) -> None:
    for method, expect_error in (("GET", True), ("HEAD", False)):
        exchange = new_exchange(ctx, method)
        _, out = exchange.guest_resources()
        T["[static]response-outparam.set"](ctx, out, Ok(T["[constructor]outgoing-response"](ctx, fields(("content-length", b"3")))))
        if expect_error:
            with pytest.raises(GuestResponseError) as raised:
                await exchange.response()
            assert raised.value.error_code == Case("HTTP-response-body-size", 0)
        else:
            assert (await exchange.response()).body is None


async def test_exchange_error_code_response(ctx: WasiCtx) -> None:
    exchange = new_exchange(ctx)
    _, out = exchange.guest_resources()
    T["[static]response-outparam.set"](ctx, out, Err(Case("HTTP-request-denied")))
    exchange.guest_returned(None)
    with pytest.raises(GuestResponseError) as raised:
        await exchange.response()
    assert raised.value.error_code == Case("HTTP-request-denied")


async def test_exchange_never_set_and_trap_before_head(ctx: WasiCtx) -> None:
    exchange = new_exchange(ctx)
    await asyncio.to_thread(exchange.guest_returned, None)
    with pytest.raises(GuestNeverResponded):
        await exchange.response()
    exchange = new_exchange(ctx)
    boom = RuntimeError("boom")
    await asyncio.to_thread(exchange.guest_returned, boom)
    with pytest.raises(GuestTrapped) as raised:
        await exchange.response()
    assert raised.value.error is boom


async def test_exchange_trap_after_head_fails_the_body(ctx: WasiCtx) -> None:
    exchange = new_exchange(ctx)
    _, out = exchange.guest_resources()

    def guest() -> None:
        resp = T["[constructor]outgoing-response"](ctx, T["[constructor]fields"](ctx))
        body = T["[method]outgoing-response.body"](ctx, resp)
        T["[static]response-outparam.set"](ctx, out, Ok(resp))
        stream = T["[method]outgoing-body.write"](ctx, body)
        output_blocking_write_and_flush(ctx, stream, b"partial body\n")
        exchange.guest_returned(Trap("unreachable"))

    worker = asyncio.ensure_future(asyncio.to_thread(guest))
    response = await exchange.response()
    assert await response.body.drain() == b"partial body\n"
    await worker
    with pytest.raises(PipeFailed):
        await response.body.drain()


async def test_exchange_fails_an_unread_request_body_when_the_guest_returns(ctx: WasiCtx) -> None:
    pipe = Pipe(ctx.loop, 8)
    exchange = new_exchange(ctx, "POST", pipe)
    await pipe.feed(b"12345678")
    feeding = asyncio.ensure_future(pipe.feed(b"more"))  # blocked: pipe full
    await asyncio.sleep(0)
    await asyncio.to_thread(exchange.guest_returned, None)
    with pytest.raises(PipeFailed):
        await feeding


# -- outgoing-handler ----------------------------------------------------------------

def outgoing_request(authority: str | None, path: str | None = "/", scheme: Case | None = Case("HTTP"),
                     method: Case = Case("get"), headers: Fields | None = None) -> OutgoingRequest:
    req = T["[constructor]outgoing-request"](None, headers or T["[constructor]fields"](None))
    T["[method]outgoing-request.set-method"](None, req, method)
    T["[method]outgoing-request.set-scheme"](None, req, scheme)
    T["[method]outgoing-request.set-authority"](None, req, authority)
    T["[method]outgoing-request.set-path-with-query"](None, req, path)
    return req


def wait_response(ctx: WasiCtx, future: FutureIncomingResponse) -> Any:
    T["[method]future-incoming-response.subscribe"](ctx, future).block(ctx)
    result = T["[method]future-incoming-response.get"](ctx, future)
    assert T["[method]future-incoming-response.get"](ctx, future) == Err(None)
    return result.value


async def echo_app() -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        data = await request.read()
        reply = web.StreamResponse(status=202, headers={"x-method": request.method, "x-got": str(len(data))})
        reply.headers["x-in-headers"] = ",".join(k.lower() for k in request.headers)
        reply.headers["x-path"] = request.path_qs
        await reply.prepare(request)
        await reply.write(data)
        await reply.write_eof()
        return reply

    async def slow_head(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    async def slow_body(request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse()
        await reply.prepare(request)
        await reply.write(b"first")
        await asyncio.sleep(2)
        await reply.write(b"second")
        return reply

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/slow-head", slow_head)
    app.router.add_get("/slow-body", slow_body)
    return app


@pytest.mark.parametrize(("allowed", "authority"), [
    (frozenset(), "127.0.0.1:80"),
    (frozenset({"127.0.0.1:81"}), "127.0.0.1:80"),
    (frozenset({"127.0.0.1:443"}), "127.0.0.1"),  # http defaults to 80
    (frozenset({"other.test"}), "127.0.0.1:80"),
])
async def test_outgoing_denied_unless_allowed(client: aiohttp.ClientSession, allowed: frozenset[str], authority: str) -> None:
    ctx = make_ctx(client, allowed)
    assert err_of(handle, ctx, outgoing_request(authority), None) == Case("HTTP-request-denied")


async def test_outgoing_invalid_requests(client: aiohttp.ClientSession) -> None:
    ctx = make_ctx(client, frozenset({"127.0.0.1"}))
    assert err_of(handle, ctx, outgoing_request(None), None) == Case("HTTP-request-URI-invalid")
    assert err_of(handle, ctx, outgoing_request("127.0.0.1", path=None), None) == Case("HTTP-request-URI-invalid")
    assert err_of(handle, ctx, outgoing_request("127.0.0.1", scheme=Case("other", "WS")), None) == Case("HTTP-protocol-error")
    declared = outgoing_request("127.0.0.1", headers=fields(("content-length", b"4")))
    assert err_of(handle, ctx, declared, None) == Case("HTTP-request-body-size", 0)
    assert err_of(handle, make_ctx(None, frozenset({"127.0.0.1"})), outgoing_request("127.0.0.1"), None) == Case("configuration-error")


async def test_outgoing_post_streams_both_bodies(client: aiohttp.ClientSession, aiohttp_server: Any) -> None:
    server = await aiohttp_server(await echo_app())
    ctx = make_ctx(client, frozenset({f"127.0.0.1:{server.port}"}), pipe_capacity=1024, max_chunk=512)
    payload = bytes(range(256)) * 200

    def guest() -> tuple[int, list[tuple[str, bytes]], bytes, Any]:
        headers = fields(("Content-Length", str(len(payload)).encode()), ("X-Custom", b"v"))
        req = outgoing_request(f"127.0.0.1:{server.port}", "/echo?x=1#fragment", method=Case("post"), headers=headers)
        body = T["[method]outgoing-request.body"](ctx, req)
        future = handle(ctx, req, None)
        stream = T["[method]outgoing-body.write"](ctx, body)
        write_all(ctx, stream, payload)  # streams while the request is in flight
        stream.on_drop()
        T["[static]outgoing-body.finish"](ctx, body, None)
        response = wait_response(ctx, future)
        assert isinstance(response, Ok)
        resp = response.value
        assert isinstance(resp, IncomingResponse)
        status = T["[method]incoming-response.status"](ctx, resp)
        entries = T["[method]fields.entries"](ctx, T["[method]incoming-response.headers"](ctx, resp))
        in_body = T["[method]incoming-response.consume"](ctx, resp)
        assert err_of(T["[method]incoming-response.consume"], ctx, resp) is None
        in_stream = T["[method]incoming-body.stream"](ctx, in_body)
        data = read_all(ctx, in_stream)
        in_stream.on_drop()
        trailers = T["[static]incoming-body.finish"](ctx, in_body)
        T["[method]future-trailers.subscribe"](ctx, trailers).block(ctx)
        return status, entries, data, T["[method]future-trailers.get"](ctx, trailers)

    status, entries, data, trailers = await asyncio.to_thread(guest)
    assert status == 202
    assert data == payload
    headers = {name.lower(): value for name, value in entries}
    assert headers["x-method"] == b"POST" and headers["x-got"] == str(len(payload)).encode()
    assert headers["x-path"] == b"/echo?x=1"
    sent = headers["x-in-headers"].split(b",")
    assert b"x-custom" in sent and b"user-agent" not in sent and b"accept-encoding" not in sent
    assert not FORBIDDEN_HEADERS & set(headers)  # e.g. transfer-encoding hidden from the guest
    assert trailers == Ok(Ok(None))


async def test_outgoing_allowed_by_bare_host_and_body_size_error(client: aiohttp.ClientSession, aiohttp_server: Any) -> None:
    server = await aiohttp_server(await echo_app())
    ctx = make_ctx(client, frozenset({"127.0.0.1"}))

    def guest() -> Any:
        req = outgoing_request(f"127.0.0.1:{server.port}", "/echo", method=Case("put"),
                               headers=fields(("content-length", b"10")))
        body = T["[method]outgoing-request.body"](ctx, req)
        future = handle(ctx, req, None)
        stream = T["[method]outgoing-body.write"](ctx, body)
        output_blocking_write_and_flush(ctx, stream, b"short")
        stream.on_drop()
        finish_error = err_of(T["[static]outgoing-body.finish"], ctx, body, None)
        return finish_error, wait_response(ctx, future)

    finish_error, outcome = await asyncio.to_thread(guest)
    assert finish_error == Case("HTTP-request-body-size", 5)
    assert outcome == Err(Case("HTTP-request-body-size", 5))


async def test_outgoing_connection_refused(client: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctx = make_ctx(client, frozenset({"127.0.0.1"}))
    future = handle(ctx, outgoing_request(f"127.0.0.1:{port}"), None)
    assert await asyncio.to_thread(wait_response, ctx, future) == Err(Case("connection-refused"))


async def test_outgoing_first_byte_timeout(client: aiohttp.ClientSession, aiohttp_server: Any) -> None:
    server = await aiohttp_server(await echo_app())
    ctx = make_ctx(client, frozenset({"127.0.0.1"}))
    opts = RequestOptions()
    T["[method]request-options.set-first-byte-timeout"](ctx, opts, 200_000_000)
    future = handle(ctx, outgoing_request(f"127.0.0.1:{server.port}", "/slow-head"), opts)
    assert await asyncio.to_thread(wait_response, ctx, future) == Err(Case("connection-read-timeout"))


async def test_outgoing_between_bytes_timeout(client: aiohttp.ClientSession, aiohttp_server: Any) -> None:
    server = await aiohttp_server(await echo_app())
    ctx = make_ctx(client, frozenset({"127.0.0.1"}))
    opts = RequestOptions()
    T["[method]request-options.set-between-bytes-timeout"](ctx, opts, 200_000_000)
    future = handle(ctx, outgoing_request(f"127.0.0.1:{server.port}", "/slow-body"), opts)

    def guest() -> tuple[bytes, Any]:
        resp = wait_response(ctx, future).value
        stream = T["[method]incoming-body.stream"](ctx, T["[method]incoming-response.consume"](ctx, resp))
        first = input_blocking_read(ctx, stream, 100)
        while True:
            try:
                input_blocking_read(ctx, stream, 100)
            except Err as error:
                return first, error.value

    first, error = await asyncio.to_thread(guest)
    assert first == b"first"
    assert error.tag == "last-operation-failed"
    assert T["http-error-code"](ctx, error.payload) == Case("connection-read-timeout")


async def test_outgoing_dns_error(client: aiohttp.ClientSession) -> None:
    ctx = make_ctx(client, frozenset({"nonexistent.invalid"}))
    future = handle(ctx, outgoing_request("nonexistent.invalid"), None)
    outcome = await asyncio.wait_for(asyncio.to_thread(wait_response, ctx, future), 30)
    assert outcome == Err(Case("DNS-error", {"rcode": None, "info-code": None}))


async def test_outgoing_requests_are_cancelled_when_dropped_or_when_the_guest_returns(
    client: aiohttp.ClientSession, aiohttp_server: Any,
) -> None:
    server = await aiohttp_server(await echo_app())
    ctx = make_ctx(client, frozenset({"127.0.0.1"}))
    dropped = handle(ctx, outgoing_request(f"127.0.0.1:{server.port}", "/slow-head"), None)
    dropped.on_drop()
    kept = handle(ctx, outgoing_request(f"127.0.0.1:{server.port}", "/slow-head"), None)
    new_exchange(ctx).guest_returned(None)
    for future in (dropped, kept):
        await asyncio.to_thread(T["[method]future-incoming-response.subscribe"](ctx, future).block, ctx)
    assert kept.outcome == Case("internal-error", "outgoing request ended without a response")
    assert not ctx.extras["wasi:http/outgoing-handler in-flight"]


# -- registration ------------------------------------------------------------------

def test_every_wasi_http_function_is_registered_once() -> None:
    wit = Path(__file__).resolve().parent.parent / "wit" / "deps" / "http" / "package.wit"
    if not wit.exists():
        pytest.skip(f"no WIT copy at {wit}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_wasi_misc_unit import parse_wit

    _, interfaces, imports = parse_wit(wit.read_text())
    assert imports == {"outgoing-handler"}
    from wasmhost.wasi import http_body, http_exchange, http_fields, http_interface, http_response

    provided = [iface for module in (http_interface, http_fields, http_body, http_response, http_types,
                                     http_outgoing, http_exchange) for iface in module.INTERFACES]
    assert [iface.name for iface in provided] == ["wasi:http/types", "wasi:http/outgoing-handler"]
    for iface in provided:
        functions, resources = interfaces[iface.name.rpartition("/")[2]]
        assert set(iface.functions) == functions, iface.name
        assert set(iface.resources) == resources, iface.name
    assert types_interface.resources["incoming-body"] is IncomingBody
    assert {OutgoingResponse, OutgoingBody, FutureTrailers} <= set(types_interface.resources.values())
