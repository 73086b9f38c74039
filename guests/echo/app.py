"""echo: reflects the request back.

Routes (only the path is matched, the query string is ignored):

``/headers``
    ``200`` ``application/json``: every request header as
    ``{"name": ["value", ...], ...}``; names in order of first appearance,
    repeated names keep all their values in order, values are decoded as
    latin-1.
``/info``
    ``200`` ``application/json``:
    ``{"method": "GET", "scheme": "http", "authority": "host:port",
    "path_with_query": "/info?a=1"}`` (``scheme``/``authority``/
    ``path_with_query`` are ``null`` when the host gives none).
``/trailers``
    ``200`` ``text/plain`` with the header ``trailer: x-checksum``, body
    ``trailers follow\n``, then the trailer
    ``x-checksum: sha256:<hex sha256 of the body>``.  (HTTP/1.1 servers
    such as hyper send trailers only when the client sent ``te: trailers``
    and the response announced them in ``trailer``.)
``/status/NNN``
    like the default route but answers with status ``NNN`` (100 < NNN < 600
    and not 1xx; for 204 and 304 the request body is read and dropped and no
    body is sent).  A malformed ``NNN`` gives ``400``.
anything else
    ``200``; the request body is streamed back chunk by chunk as it arrives
    (never held whole) with the request's ``content-type`` copied (no
    ``content-length``: the response is chunked).  If the client goes away
    (the body stream reports ``closed``) the guest stops writing and returns
    normally.
"""

import hashlib
import json

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.streams import InputStream, OutputStream, StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingBody,
    IncomingRequest,
    Method,
    Method_Other,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
    Scheme,
    Scheme_Http,
    Scheme_Https,
    Scheme_Other,
)

READ_SIZE = 64 * 1024
TRAILERS_BODY = b"trailers follow\n"


def method_name(method: Method) -> str:
    if isinstance(method, Method_Other):
        return method.value
    return type(method).__name__.removeprefix("Method_").upper()


def scheme_name(scheme: Scheme | None) -> str | None:
    if scheme is None:
        return None
    if isinstance(scheme, Scheme_Http):
        return "http"
    if isinstance(scheme, Scheme_Https):
        return "https"
    assert isinstance(scheme, Scheme_Other)
    return scheme.value


class ClientGone(Exception):
    """The response body stream was closed by the host (client went away)."""


def write_all(stream: OutputStream, data: bytes) -> None:
    """Write ``data`` respecting the stream's write budget, then start a flush.

    Raises ``ClientGone`` if the host closed the stream.
    """
    try:
        while data:
            budget = stream.check_write()
            if budget == 0:
                with stream.subscribe() as ready:
                    ready.block()
                continue
            stream.write(data[:budget])
            data = data[budget:]
        stream.flush()
    except Err as e:
        if isinstance(e.value, StreamError_Closed):
            raise ClientGone() from None
        raise


def finish(out_body: OutgoingBody, stream: OutputStream, trailers: Fields | None = None) -> None:
    """Wait for the written data to leave, close the stream and finish the body."""
    try:
        stream.blocking_flush()
    except Err as e:
        if not isinstance(e.value, StreamError_Closed):
            raise
    stream.__exit__(None, None, None)
    try:
        OutgoingBody.finish(out_body, trailers)
    except Err:
        pass  # the host could not deliver the end of the body: nobody to tell


def read_chunks(stream: InputStream):
    """Yield chunks of an input stream as they arrive, until it is closed."""
    while True:
        try:
            chunk = stream.blocking_read(READ_SIZE)
        except Err as e:
            if isinstance(e.value, StreamError_Closed):
                return
            raise
        if chunk:
            yield chunk


def respond(response_out: ResponseOutparam, status: int, headers: list, body: bytes,
            trailers: Fields | None = None) -> None:
    response = OutgoingResponse(Fields.from_list(headers))
    response.set_status_code(status)
    out_body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    stream = out_body.write()
    try:
        write_all(stream, body)
    except ClientGone:
        pass
    finish(out_body, stream, trailers)


def respond_json(response_out: ResponseOutparam, value) -> None:
    body = json.dumps(value).encode()
    respond(response_out, 200, [("content-type", b"application/json"),
                                ("content-length", str(len(body)).encode())], body)


def echo(request: IncomingRequest, response_out: ResponseOutparam, status: int) -> None:
    with request.headers() as fields:
        content_types = fields.get("content-type")
    headers = [("content-type", value) for value in content_types[:1]]
    response = OutgoingResponse(Fields.from_list(headers))
    response.set_status_code(status)
    no_body = status in (204, 304)
    out_body = response.body()
    ResponseOutparam.set(response_out, Ok(response))

    in_body = request.consume()
    out_stream = out_body.write()
    with in_body.stream() as in_stream:
        for chunk in read_chunks(in_stream):
            if no_body:
                continue
            try:
                write_all(out_stream, chunk)
            except ClientGone:
                break
    IncomingBody.finish(in_body)
    finish(out_body, out_stream)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path_with_query = request.path_with_query()
        path = (path_with_query or "/").split("?", 1)[0]

        if path == "/headers":
            result: dict[str, list[str]] = {}
            with request.headers() as fields:
                for name, value in fields.entries():
                    result.setdefault(name, []).append(value.decode("latin-1"))
            respond_json(response_out, result)
        elif path == "/info":
            respond_json(response_out, {
                "method": method_name(request.method()),
                "scheme": scheme_name(request.scheme()),
                "authority": request.authority(),
                "path_with_query": path_with_query,
            })
        elif path == "/trailers":
            digest = hashlib.sha256(TRAILERS_BODY).hexdigest()
            trailers = Fields.from_list([("x-checksum", f"sha256:{digest}".encode())])
            respond(response_out, 200, [("content-type", b"text/plain"), ("trailer", b"x-checksum")],
                    TRAILERS_BODY, trailers)
        elif path.startswith("/status/"):
            code = path[len("/status/"):]
            if not (code.isdigit() and len(code) == 3 and 200 <= int(code) <= 599):
                body = f"bad status {code!r}\n".encode()
                respond(response_out, 400, [("content-type", b"text/plain")], body)
            else:
                echo(request, response_out, int(code))
        else:
            echo(request, response_out, 200)
