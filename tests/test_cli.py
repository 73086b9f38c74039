"""The ``wasmhost serve`` command as a user runs it: a real process, real sockets."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CACHE_DIR, ProcessServer, free_port

BAD_COMPONENTS = {
    "not-wasm.wasm": (b"hello, I am text\n", "is not a WebAssembly file"),
    "core-module.wasm": (b"\0asm\x01\0\0\0", "is a core WebAssembly module, not a component"),
    "truncated.wasm": (b"\0asm\x0d\0\x01\0\x01", "is not a valid component"),
}

NO_HANDLER_WAT = """(component
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (func $f (canon lift (core func $i "f")))
  (export "run" (func $f))
)"""

P3_WAT = """(component
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (func $f (canon lift (core func $i "f")))
  (instance $h (export "handle" (func $f)))
  (export "wasi:http/handler@0.3.0-rc-2025-09-16" (instance $h))
)"""

UNKNOWN_IMPORT_WAT = """(component
  (import "example:odd/thing@1.0.0" (instance (export "f" (func))))
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (func $f (canon lift (core func $i "f")))
  (instance $h (export "handle" (func $f)))
  (export "wasi:http/incoming-handler@0.2.12" (instance $h))
)"""


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasmhost", *args], capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.parametrize("name", sorted(BAD_COMPONENTS))
def test_bad_component_file_exits_2_with_one_line(tmp_path: Path, name: str) -> None:
    data, message = BAD_COMPONENTS[name]
    path = tmp_path / name
    path.write_bytes(data)
    port = free_port()
    result = run_cli("serve", str(path), "--addr", f"127.0.0.1:{port}", "--no-cache")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wasmhost: error: ") and message in lines[0]
    assert "Serving" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("wat", "message"),
    [
        (NO_HANDLER_WAT, "does not export wasi:http/incoming-handler@0.2.x"),
        (P3_WAT, "wasi:http 0.3 components are not supported"),
        (UNKNOWN_IMPORT_WAT, "imports example:odd/thing@1.0.0, which wasmhost does not provide"),
    ],
)
def test_unservable_components_exit_2(tmp_path: Path, wat: str, message: str) -> None:
    path = tmp_path / "c.wat"
    path.write_text(wat)
    result = run_cli("serve", str(path), "--addr", f"127.0.0.1:{free_port()}", "--no-cache")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_missing_file_and_bad_flags_exit_2(tmp_path: Path) -> None:
    result = run_cli("serve", str(tmp_path / "nope.wasm"))
    assert result.returncode == 2 and "cannot read" in result.stderr
    result = run_cli("serve", "--idle-instance-timeout", "soon")
    assert result.returncode == 2 and "invalid duration" in result.stderr
    result = run_cli("serve", "--max-instance-reuse-count", "0")
    assert result.returncode == 2 and "max-instance-reuse-count" in result.stderr


class Server(ProcessServer):
    """A `wasmhost serve` process on a free loopback port."""

    def __init__(self, *args: str) -> None:
        port = free_port()
        super().__init__(
            [sys.executable, "-m", "wasmhost", "serve", *args, "--addr", f"127.0.0.1:{port}",
             "--cache-dir", str(CACHE_DIR)],
            port,
        )


def test_guest_output_is_prefixed_per_request(guest) -> None:
    server = Server(str(guest("log")))
    try:
        assert server.get("/first") == (200, b"logged\n")
    finally:
        out, err = server.stop()
    # Request ids count from 0, as in wasmtime serve.
    assert "stdout [0] :: log: stdout line 1 GET /first\n" in out
    assert "stdout [0] :: log: stdout line 2\n" in out
    # A partial line is flushed, prefixed, when the request ends.
    assert "stdout [0] :: log: stdout partial\n" in out
    assert "stderr [0] :: log: stderr line 1\n" in err
    assert "stderr [0] :: log: stderr partial\n" in err


def test_no_logging_prefix(guest) -> None:
    server = Server(str(guest("log")), "--no-logging-prefix")
    try:
        server.get("/x")
    finally:
        out, _ = server.stop()
    assert "log: stdout line 1 GET /x\n" in out
    assert "::" not in out


def test_demo_serves_from_the_command_line() -> None:
    server = Server()
    try:
        status, body = server.get("/")
    finally:
        _, err = server.stop()
    assert status == 200 and b"Hello from wasmhost!" in body
    assert f"Serving HTTP on http://127.0.0.1:{server.port}/" in err


def test_profile_perfmap_names_wasm_functions() -> None:
    server = Server("--profile", "perfmap")
    try:
        assert server.get("/")[0] == 200
        perf_map = Path(f"/tmp/perf-{server.proc.pid}.map")
        assert perf_map.exists()
        assert "wasm" in perf_map.read_text()
    finally:
        server.stop()
        Path(f"/tmp/perf-{server.proc.pid}.map").unlink(missing_ok=True)


def test_trap_is_logged_with_request_id_and_backtrace(guest) -> None:
    server = Server(str(guest("misbehave")))
    try:
        status, _ = server.get("/trap")
        assert status == 500
        assert server.get("/")[0] == 200
    finally:
        _, err = server.stop()
    assert "request 0: guest trapped" in err
    assert "wasm backtrace" in err


@pytest.mark.parametrize("loop", ["inline", "asyncio"])
def test_sigterm_finishes_requests_in_flight_then_exits(guest, loop: str) -> None:
    import signal
    import threading

    server = Server(str(guest("misbehave")), "--loop", loop)
    result: dict[str, tuple[int, bytes]] = {}
    request = threading.Thread(target=lambda: result.setdefault("r", server.get("/sleep?ms=800")))
    request.start()
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    request.join(10)
    assert result["r"] == (200, b"slept 800 ms\n")
    assert server.proc.wait(timeout=30) == 0


@pytest.mark.parametrize("loop", ["inline", "asyncio"])
def test_guests_stuck_writing_to_a_full_stdout_pipe_hold_up_only_their_own_requests(guest, loop: str) -> None:
    """The server's stdout is a pipe nobody reads here (until stop). One guest prints
    1 MiB and blocks once the pipe is full; then a short print on another, warm
    instance blocks at once, inside a short call that (with --loop inline) runs on
    the event loop's own thread. Other requests must still be served."""
    import threading

    server = Server(str(guest("misbehave")), "--loop", loop, "--idle-instance-timeout", "60")
    results: dict[str, tuple[int, bytes]] = {}

    def get(path: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: results.setdefault(path, server.get(path)))
        thread.start()
        return thread

    blocked: list[threading.Thread] = []
    try:
        warm = [get("/sleep?ms=300"), get("/sleep?ms=301")]  # two instances, both warm afterwards
        for thread in warm:
            thread.join(30)
        blocked.append(get("/print?kib=1024"))
        time.sleep(1.0)  # far longer than printing into a pipe with room takes
        blocked.append(get("/print?kib=1"))
        time.sleep(0.5)
        assert all(thread.is_alive() for thread in blocked), "a printing request finished: the pipe did not fill"
        assert server.get("/") == (200, b"ok\n")
    finally:
        out, _ = server.stop()  # reads the pipe: the printers get to finish
        for thread in blocked:
            thread.join(30)
    assert results["/print?kib=1024"] == (200, b"printed 1024 KiB\n")
    assert results["/print?kib=1"] == (200, b"printed 1 KiB\n")
    assert out.count("misbehave: " + "x" * 52) == 1025 * 16


def test_a_client_gone_before_the_response_head_is_not_a_server_error(guest) -> None:
    import socket

    server = Server(str(guest("misbehave")))
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /sleep?ms=300&then=300 HTTP/1.1\r\nHost: test\r\n\r\n")
            time.sleep(0.1)
        # Gone: the head comes 0.2 s later (while its body is still to come), the body 0.3 s after that.
        time.sleep(1.0)
        assert server.get("/sleep?ms=1&then=1") == (200, b"slept 1 ms, then 1 ms\n")
    finally:
        out, err = server.stop()
    assert "Traceback" not in err and "Error handling request" not in err, err
    assert "stdout [0] :: misbehave: body not delivered" in out  # the guest saw the write fail


@pytest.mark.parametrize("loop", ["inline", "asyncio"])
def test_a_response_body_whose_client_left_reads_as_closed_to_the_guest(guest, loop: str) -> None:
    """As in wasmtime, where the body stream reports ``closed`` once hyper dropped the
    receiving end: a guest that stops writing on ``closed`` returns normally, no trap."""
    import socket

    server = Server(str(guest("misbehave")), "--loop", loop)
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
            received = 0
            while received < 200_000:
                data = sock.recv(65536)
                assert data, "the server ended the response"
                received += len(data)
        deadline = time.monotonic() + 30
        while server.get("/count") != (200, b"2\n") and time.monotonic() < deadline:
            time.sleep(0.1)  # the same instance serves on once the streaming request returned
    finally:
        out, err = server.stop()
    assert "misbehave: client gone after" in out
    assert "trapped" not in err, err


@pytest.mark.parametrize("loop", ["inline", "asyncio"])
def test_sigterm_cuts_off_requests_still_in_flight_after_the_shutdown_timeout(guest, loop: str) -> None:
    """A client that stops reading holds its response (and its guest) forever; after
    SIGTERM it gets --shutdown-timeout, then the server exits anyway (aiohttp alone
    would wait twice its own 60 s)."""
    import signal
    import socket

    server = Server(str(guest("misbehave")), "--loop", loop, "--shutdown-timeout", "1s")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")  # then it reads no more
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    out, err = server.proc.communicate()
    assert "1 requests still in flight after 1.0s; cutting them off" in err
    assert "misbehave: client gone after" in out  # the guest saw its stream close and returned


def test_tune_gc_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    import gc

    from wasmhost.cli import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (5000, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
