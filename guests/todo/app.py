"""todo: a small JSON API written the way a componentize-py user would write one.

Nobody tuned it for wasmhost: it reads the whole request body with
blocking reads, routes on method and path, keeps its list in a module-level
dict (so it lives as long as the instance) and answers JSON.

    GET    /todos            -> {"todos": [...], "count": N}
    POST   /todos   {"title": "..."}  -> 201 {"id": N, "title": "...", "done": false}
    GET    /todos/N          -> the item, or 404 {"error": "not found"}
    DELETE /todos/N          -> 204
    GET    /env              -> {"GREETING": <value of the GREETING env var or null>}
    other                    -> 404 / 405 with an error object
"""

import json
import os

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Delete,
    Method_Get,
    Method_Post,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

TODOS: dict = {}
NEXT_ID = [1]


def read_body(request: IncomingRequest) -> bytes:
    body = request.consume()
    chunks = []
    with body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(65536))
            except Err:
                break  # the stream is closed: end of body
    return b"".join(chunks)


def send(response_out: ResponseOutparam, status: int, value=None) -> None:
    headers = [("content-type", b"application/json")] if value is not None else []
    payload = json.dumps(value, sort_keys=True).encode() if value is not None else b""
    if payload:
        headers.append(("content-length", str(len(payload)).encode()))
    response = OutgoingResponse(Fields.from_list(headers))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    if payload:
        with body.write() as stream:
            for start in range(0, len(payload), 4096):
                stream.blocking_write_and_flush(payload[start:start + 4096])
    OutgoingBody.finish(body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = request.method()
        path = (request.path_with_query() or "/").split("?", 1)[0].rstrip("/") or "/"
        parts = path.strip("/").split("/")

        if path == "/env":
            send(response_out, 200, {"GREETING": os.environ.get("GREETING")})
        elif parts[0] != "todos" or len(parts) > 2:
            send(response_out, 404, {"error": "no such route", "path": path})
        elif len(parts) == 1 and isinstance(method, Method_Get):
            items = [TODOS[key] for key in sorted(TODOS)]
            send(response_out, 200, {"todos": items, "count": len(items)})
        elif len(parts) == 1 and isinstance(method, Method_Post):
            try:
                data = json.loads(read_body(request) or b"{}")
                title = str(data["title"])
            except (ValueError, KeyError, TypeError):
                send(response_out, 400, {"error": "expected a JSON object with a title"})
                return
            item = {"id": NEXT_ID[0], "title": title, "done": False}
            TODOS[NEXT_ID[0]] = item
            NEXT_ID[0] += 1
            send(response_out, 201, item)
        elif len(parts) == 2 and parts[1].isdigit():
            key = int(parts[1])
            if isinstance(method, Method_Get):
                if key in TODOS:
                    send(response_out, 200, TODOS[key])
                else:
                    send(response_out, 404, {"error": "not found"})
            elif isinstance(method, Method_Delete):
                TODOS.pop(key, None)
                send(response_out, 204)
            else:
                send(response_out, 405, {"error": "method not allowed"})
        else:
            send(response_out, 405, {"error": "method not allowed"})
