"""log: writes to stdout and stderr, then answers.

Per request it writes, flushing after each write:

* stdout: ``log: stdout line 1 METHOD PATH\n``, ``log: stdout line 2\n``,
  then ``log: stdout partial`` (no newline);
* stderr: ``log: stderr line 1\n``, then ``log: stderr partial`` (no newline);

and answers ``200`` ``text/plain`` ``logged\n``.
"""

import sys

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Other,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = request.method()
        name = method.value if isinstance(method, Method_Other) else type(method).__name__[7:].upper()
        print(f"log: stdout line 1 {name} {request.path_with_query()}", flush=True)
        print("log: stdout line 2", flush=True)
        sys.stdout.write("log: stdout partial")
        sys.stdout.flush()
        print("log: stderr line 1", file=sys.stderr, flush=True)
        sys.stderr.write("log: stderr partial")
        sys.stderr.flush()

        body = b"logged\n"
        response = OutgoingResponse(Fields.from_list([
            ("content-type", b"text/plain"),
        ]))
        out_body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with out_body.write() as stream:
            stream.blocking_write_and_flush(body)
        OutgoingBody.finish(out_body, None)
