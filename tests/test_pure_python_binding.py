"""The pure-Python binding (no C compiler, or WASMHOST_PURE_PYTHON=1) serves the same.

The rest of the suite runs on the compiled binding when it is built; these
end-to-end checks run the fallback through a real server, including the parts
the compiled one does differently: epoch ticking, interruption of spinning
wasm, traps from host calls, resource handles and bodies.
"""
from __future__ import annotations

import asyncio
import os
import time

import pytest

from wasmhost.binding import native


TIMEOUT = 0.5


@pytest.fixture
def pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "module", None)


async def test_requests_bodies_and_traps(pure_python, serve, guest) -> None:
    client = await serve(guest("echo"))
    body = os.urandom(200_000)
    resp = await client.post("/", data=body, headers={"x-test": "1"})
    assert resp.status == 200
    assert await resp.read() == body

    client = await serve(guest("misbehave"))
    assert (await client.get("/trap")).status == 500
    resp = await client.get("/")
    assert resp.status == 200 and await resp.text() == "ok\n"


async def test_spinning_guest_is_interrupted(pure_python, serve, guest) -> None:
    client = await serve(guest("misbehave"), request_timeout=f"{int(TIMEOUT * 1000)}ms")
    started = time.monotonic()
    spin = asyncio.ensure_future(client.get("/spin"))
    for _ in range(3):
        assert (await client.get("/")).status == 200
    assert (await spin).status == 504
    assert TIMEOUT * 0.9 <= time.monotonic() - started <= TIMEOUT * 2 + 0.5


def test_compiled_binding_is_built() -> None:
    """CI machines have a C compiler: the fast path must not silently go missing."""
    if os.environ.get("WASMHOST_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("WASMHOST_PURE_PYTHON is set")
    assert native.module is not None, "wasmhost.binding._native was not built (pip install -e . with a C compiler)"
