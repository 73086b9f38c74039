"""Shared fixtures: guests built once per session, real wasmhost servers over loopback HTTP."""
from __future__ import annotations

import os
import sys
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
