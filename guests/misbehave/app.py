"""misbehave: guests that do what a host must survive.

``/spin``
    loops forever inside wasm (never answers; the host must interrupt it).
``/sleep?ms=N``
    blocks in ``wasi:io/poll#poll`` on a ``wasi:clocks/monotonic-clock``
    ``subscribe-duration`` pollable for N milliseconds (default 100), then
    answers ``200`` ``slept N ms\n``.
``/sleep?ms=N&then=M``
    the same, but sets the response head after N ms and writes the body
    (``slept N ms, then M ms\n``) M ms later; if the client is gone by then,
    the write fails and the guest returns without a trap.
``/trap``
    raises a Python exception before setting any response; componentize-py
    turns an uncaught exception into a wasm trap.
``/late``
    sets a ``200`` response (no content-length), writes and flushes
    ``partial body\n``, then traps the same way.
``/short``, ``/long``
    declare ``content-length: 10`` and then write 5 or 15 bytes.
``/count``
    a per-instance request counter (``N\n``), to tell instances apart.
``/stream?kib=N``
    ``200`` with an N KiB body (default 100 MiB), written 4 KiB at a time with
    ``blocking-write-and-flush``. If the stream reports ``closed`` (the client went
    away) the guest prints ``misbehave: client gone after K KiB`` and returns
    normally; any other stream error traps.
``/print?kib=N``
    prints N KiB to stdout (lines of 64 bytes, default 256 KiB), then answers
    ``200`` ``printed N KiB\n``: more than a pipe holds when nobody reads it.
anything else
    ``200`` ``text/plain`` body ``ok\n``.
"""

from urllib.parse import parse_qs, urlsplit

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import monotonic_clock, poll
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


# Requests to /count served by this instance.
SERVED = [0]


def respond_text(response_out: ResponseOutparam, text: str) -> None:
    body = text.encode()
    response = OutgoingResponse(Fields.from_list([
        ("content-type", b"text/plain"),
    ]))
    out_body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with out_body.write() as stream:
        stream.blocking_write_and_flush(body)
    OutgoingBody.finish(out_body, None)


def sleep_ms(ms: int) -> None:
    with monotonic_clock.subscribe_duration(ms * 1_000_000) as timer:
        poll.poll([timer])


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        url = urlsplit(request.path_with_query() or "/")

        if url.path == "/spin":
            n = 0
            while True:
                n += 1

        elif url.path == "/sleep":
            query = parse_qs(url.query)
            ms = int(query.get("ms", ["100"])[0])
            then = int(query.get("then", ["0"])[0])
            sleep_ms(ms)
            if not then:
                respond_text(response_out, f"slept {ms} ms\n")
                return
            response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
            out_body = response.body()
            ResponseOutparam.set(response_out, Ok(response))
            sleep_ms(then)
            try:
                with out_body.write() as stream:
                    stream.blocking_write_and_flush(f"slept {ms} ms, then {then} ms\n".encode())
                OutgoingBody.finish(out_body, None)
            except Exception as error:  # the client went away
                print(f"misbehave: body not delivered: {error!r}")

        elif url.path == "/trap":
            raise RuntimeError("misbehave: trap before the response")

        elif url.path == "/late":
            response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
            out_body = response.body()
            ResponseOutparam.set(response_out, Ok(response))
            stream = out_body.write()
            stream.blocking_write_and_flush(b"partial body\n")
            raise RuntimeError("misbehave: trap after the response head and part of the body")

        elif url.path in ("/short", "/long"):
            # Declares 10 bytes, then writes 5 (/short) or 15 (/long).
            response = OutgoingResponse(Fields.from_list([("content-length", b"10")]))
            out_body = response.body()
            ResponseOutparam.set(response_out, Ok(response))
            size = 5 if url.path == "/short" else 15
            try:
                with out_body.write() as stream:
                    stream.blocking_write_and_flush(b"x" * size)
                OutgoingBody.finish(out_body, None)
            except Exception as error:  # the host refuses the broken length
                print(f"misbehave: body refused: {error!r}")

        elif url.path == "/stream":
            kib = int(parse_qs(url.query).get("kib", ["102400"])[0])
            response = OutgoingResponse(Fields.from_list([("content-type", b"application/octet-stream")]))
            out_body = response.body()
            ResponseOutparam.set(response_out, Ok(response))
            piece = b"s" * 4096  # the most blocking-write-and-flush takes
            sent = 0
            with out_body.write() as stream:
                try:
                    while sent < kib * 1024:
                        stream.blocking_write_and_flush(piece)
                        sent += len(piece)
                except Err as error:
                    if not isinstance(error.value, StreamError_Closed):
                        raise
                    print(f"misbehave: client gone after {sent // 1024} KiB")
                    return
            OutgoingBody.finish(out_body, None)

        elif url.path == "/print":
            kib = int(parse_qs(url.query).get("kib", ["256"])[0])
            line = "misbehave: " + "x" * 52  # 63 characters and a newline
            for _ in range(kib * 16):
                print(line, flush=True)
            respond_text(response_out, f"printed {kib} KiB\n")

        elif url.path == "/count":
            SERVED[0] += 1
            respond_text(response_out, f"{SERVED[0]}\n")

        else:
            respond_text(response_out, "ok\n")
