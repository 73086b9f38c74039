"""guests/build.py: builds are cached, outputs are components, demo.wat stays in sync."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from guests.build import BUILD_DIR, build_guest, list_guests, wasm_tools_path  # noqa: E402

# "\0asm", version 0x0d, layer 1 (component); a core module has layer 0.
COMPONENT_HEADER = b"\x00asm\x0d\x00\x01\x00"


def _assert_component(path: Path) -> None:
    assert path.read_bytes()[:8] == COMPONENT_HEADER
    exe = wasm_tools_path()
    if exe is not None:
        subprocess.run([exe, "validate", "--features", "component-model", str(path)], check=True)


def test_guest_list() -> None:
    assert {"hello", "echo", "counter", "outgoing", "misbehave", "log", "wat-hello"} <= set(
        list_guests()
    )


def test_hello_second_build_is_a_cache_hit() -> None:
    pytest.importorskip("componentize_py")
    first = build_guest("hello")
    mtime = first.stat().st_mtime_ns
    second = build_guest("hello")
    assert second == first == BUILD_DIR / "hello.wasm"
    assert second.stat().st_mtime_ns == mtime
    _assert_component(first)


def test_wat_hello_builds_and_matches_demo() -> None:
    path = build_guest("wat-hello")
    assert build_guest("wat-hello") == path
    if path.suffix == ".wasm":
        _assert_component(path)
    source = (ROOT / "guests" / "wat-hello" / "hello.wat").read_text()
    assert (ROOT / "wasmhost" / "demo.wat").read_text() == source, (
        "wasmhost/demo.wat must be a copy of guests/wat-hello/hello.wat"
    )
