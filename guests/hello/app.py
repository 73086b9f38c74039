"""hello: the smallest wasi:http/proxy guest.

Every request gets ``200``, ``content-type: text/plain`` and the body
``Hello from wasmhost\n``.  The response header ``x-path`` echoes the request
as ``METHOD path-with-query`` (e.g. ``GET /a?b=1``).
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method,
    Method_Other,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

BODY = b"Hello from wasmhost\n"


def method_name(method: Method) -> str:
    if isinstance(method, Method_Other):
        return method.value
    return type(method).__name__.removeprefix("Method_").upper()


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        x_path = f"{method_name(request.method())} {request.path_with_query() or '/'}"
        headers = Fields.from_list(
            [
                ("content-type", b"text/plain"),
                ("x-path", x_path.encode("latin-1", "replace")),
            ]
        )
        response = OutgoingResponse(headers)
        response.set_status_code(200)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(BODY)
        OutgoingBody.finish(body, None)
