"""counter: a module-level counter, incremented on every request.

Body ``N\n`` (``text/plain``), where ``N`` is how many requests this instance
has handled, starting at 1.  A host that reuses one instance shows 1, 2, 3...;
a host that makes a fresh instance per request (like ``wasmtime serve``)
always shows ``1``.
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

count = 0


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        global count
        count += 1
        body = f"{count}\n".encode()
        response = OutgoingResponse(Fields.from_list([
            ("content-type", b"text/plain"),
        ]))
        out_body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with out_body.write() as stream:
            stream.blocking_write_and_flush(body)
        OutgoingBody.finish(out_body, None)
