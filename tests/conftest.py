"""Shared fixtures: guests built once per session, real wasmhost servers over loopback HTTP."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the `guests` build helper lives beside the package

from wasmhost.server import create_app  # noqa: E402
from wasmhost.settings import Settings  # noqa: E402

# One compiled-artifact cache for the whole run (and later runs): an 18 MB
# componentize-py guest compiles in seconds but loads from the cache in ~40 ms.
CACHE_DIR = Path(os.environ.get("WASMHOST_TEST_CACHE", ROOT / "guests" / "build" / "cwasm"))


@pytest.fixture(scope="session")
def guest() -> Callable[[str], Path]:
    """``guest("hello")`` -> path of the built component (built once, cached by source hash)."""
    from guests.build import build_guest

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_guest(name)
        return built[name]

    return get


Serve = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def serve(aiohttp_client: Any) -> Serve:
    """``await serve(component_path_or_None, **settings)`` -> a client of a real wasmhost server."""

    async def start(component: Path | None = None, **settings: Any) -> TestClient:
        settings.setdefault("cache_dir", CACHE_DIR)
        app = create_app(Settings(component=component, **settings))
        return await aiohttp_client(TestServer(app, host="127.0.0.1"))

    return start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcessServer:
    """A server process (wasmhost or the reference `wasmtime serve`) on a loopback port."""

    def __init__(self, cmd: list[str], port: int, startup_timeout: float = 120, **popen: Any) -> None:
        self.port = port
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.proc.stderr.read() if self.proc.stderr else "server died")
                time.sleep(0.05)
        self.proc.kill()
        raise TimeoutError(f"{cmd[0]} did not start listening")

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=body, method=method, headers=headers or {},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    def get(self, path: str) -> tuple[int, bytes]:
        status, _, body = self.request("GET", path)
        return status, body

    def stop(self) -> tuple[str, str]:
        self.proc.terminate()
        try:
            return self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()


# Modules whose tests serve real guests in-process: they run on both event
# loops, the standard one (an app embedding wasmhost; guest calls on worker
# threads) and InlineLoop (the CLI's; guest calls on the loop's driving thread).
_BOTH_LOOPS = {"test_serve_http.py", "test_reuse_and_timeouts.py", "test_wasi_guest.py", "test_inline_loop.py"}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item,
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name not in _BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop}  # one factory: test names stay as they are
    from wasmhost.inline_loop import InlineLoop

    return {"asyncio": asyncio.new_event_loop, "inline": InlineLoop}
