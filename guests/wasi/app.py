"""wasi: exercises the WASI interfaces beyond wasi:http through Python's standard library.

Each path answers JSON describing what the guest saw:

``/random``   ``os.urandom`` and ``random.random`` (wasi:random)
``/clocks``   ``time.time`` and ``time.monotonic`` twice, 20 ms apart (wasi:clocks)
``/env``      ``os.environ`` and ``sys.argv`` (wasi:cli/environment)
``/files``    ``os.listdir("/")`` and opening a file (wasi:filesystem: nothing is preopened)
``/exit``     ``sys.exit(3)`` before answering (wasi:cli/exit)
"""

import json
import os
import random
import sys
import time

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam


def send_json(response_out: ResponseOutparam, value) -> None:
    payload = json.dumps(value, sort_keys=True).encode()
    response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with body.write() as stream:
        stream.blocking_write_and_flush(payload)
    OutgoingBody.finish(body, None)


def attempt(action) -> dict:
    try:
        return {"ok": repr(action())}
    except Exception as error:  # the point is to report what the host refused
        return {"error": type(error).__name__, "message": str(error)}


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = (request.path_with_query() or "/").split("?", 1)[0]
        if path == "/random":
            send_json(response_out, {
                "urandom": [os.urandom(16).hex(), os.urandom(16).hex()],
                "random": random.random(),
            })
        elif path == "/clocks":
            wall1, mono1 = time.time(), time.monotonic()
            time.sleep(0.02)
            wall2, mono2 = time.time(), time.monotonic()
            send_json(response_out, {"wall": [wall1, wall2], "monotonic": [mono1, mono2]})
        elif path == "/env":
            send_json(response_out, {"environ": dict(os.environ), "argv": sys.argv})
        elif path == "/files":
            send_json(response_out, {
                "listdir": attempt(lambda: os.listdir("/")),
                "open": attempt(lambda: open("/etc/passwd").read()),
            })
        elif path == "/exit":
            sys.exit(3)
        else:
            send_json(response_out, {"paths": ["/random", "/clocks", "/env", "/files", "/exit"]})
