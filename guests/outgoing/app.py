"""outgoing: proxies a GET through ``wasi:http/outgoing-handler``.

The target URL comes from the ``x-target`` request header, or else from the
``url`` query parameter (``/?url=http://127.0.0.1:8000/x``).

* success: the upstream status, its ``content-type`` (if any), the header
  ``x-upstream-url: <url>``, and the upstream body streamed through.
* no URL, or not an ``http``/``https`` URL: ``400`` with a text explanation.
* the outgoing request fails (connection refused, DNS error, denied by the
  host...): ``502``, ``text/plain``, body ``outgoing request failed: <error>\n``
  where ``<error>`` is the ``wasi:http/types#error-code`` variant as Python
  ``repr`` (e.g. ``ErrorCode_ConnectionRefused()``).
"""

from urllib.parse import parse_qs, urlsplit

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler
from wit_world.imports.streams import OutputStream, StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingBody,
    IncomingRequest,
    IncomingResponse,
    Method_Get,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
    Scheme_Https,
)

READ_SIZE = 64 * 1024


class ClientGone(Exception):
    """The response body stream was closed by the host (client went away)."""


def write_all(stream: OutputStream, data: bytes) -> None:
    """Write ``data`` respecting the stream's write budget, then start a flush."""
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


def finish(out_body: OutgoingBody, stream: OutputStream) -> None:
    """Wait for the written data to leave, close the stream and finish the body."""
    try:
        stream.blocking_flush()
    except Err as e:
        if not isinstance(e.value, StreamError_Closed):
            raise
    stream.__exit__(None, None, None)
    try:
        OutgoingBody.finish(out_body, None)
    except Err:
        pass  # the host could not deliver the end of the body: nobody to tell


def respond_text(response_out: ResponseOutparam, status: int, text: str) -> None:
    body = text.encode()
    response = OutgoingResponse(Fields.from_list([
        ("content-type", b"text/plain"),
        ("content-length", str(len(body)).encode()),
    ]))
    response.set_status_code(status)
    out_body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    stream = out_body.write()
    try:
        write_all(stream, body)
    except ClientGone:
        pass
    finish(out_body, stream)


def target_url(request: IncomingRequest) -> str | None:
    with request.headers() as fields:
        values = fields.get("x-target")
    if values:
        return values[0].decode("latin-1")
    query = urlsplit(request.path_with_query() or "/").query
    urls = parse_qs(query).get("url")
    return urls[0] if urls else None


def fetch(url: str) -> IncomingResponse:
    """Send a GET to ``url`` and wait for the response head.

    Raises ``Err(error-code)`` if the request fails.
    """
    parts = urlsplit(url)
    outgoing = OutgoingRequest(Fields())
    outgoing.set_method(Method_Get())
    outgoing.set_scheme(Scheme_Https() if parts.scheme == "https" else Scheme_Http())
    outgoing.set_authority(parts.netloc)
    outgoing.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))

    future = outgoing_handler.handle(outgoing, None)  # raises Err(error-code)
    with future:
        while (result := future.get()) is None:
            with future.subscribe() as ready:
                ready.block()
    # result: Ok(Ok(response)) | Ok(Err(error-code)) | Err(()) (already taken)
    if isinstance(result, Err):
        raise result
    if isinstance(result.value, Err):
        raise result.value
    return result.value.value


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        url = target_url(request)
        if url is None:
            respond_text(response_out, 400, "give the URL in an x-target header or a url= query parameter\n")
            return
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            respond_text(response_out, 400, f"not an http(s) URL: {url}\n")
            return

        try:
            upstream = fetch(url)
        except Err as e:
            respond_text(response_out, 502, f"outgoing request failed: {e.value!r}\n")
            return

        with upstream:
            with upstream.headers() as fields:
                content_types = fields.get("content-type")
            headers = [("content-type", v) for v in content_types[:1]]
            headers.append(("x-upstream-url", url.encode("latin-1", "replace")))
            response = OutgoingResponse(Fields.from_list(headers))
            response.set_status_code(upstream.status())
            out_body = response.body()
            ResponseOutparam.set(response_out, Ok(response))

            in_body = upstream.consume()
            out_stream = out_body.write()
            with in_body.stream() as in_stream:
                while True:
                    try:
                        chunk = in_stream.blocking_read(READ_SIZE)
                    except Err as e:
                        if isinstance(e.value, StreamError_Closed):
                            break
                        raise
                    try:
                        write_all(out_stream, chunk)
                    except ClientGone:
                        break
            IncomingBody.finish(in_body)
            finish(out_body, out_stream)
