"""``wasmhost serve --workers N``: real server processes sharing one listening socket.

Which worker accepts a connection is up to the kernel, so the tests decide it
themselves: a worker stopped with SIGSTOP cannot accept, and every connection
made meanwhile goes to the other one.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import CACHE_DIR, ProcessServer, free_port
from tests.test_cli import run_cli

needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="finds worker processes through /proc")


class Workers(ProcessServer):
    """`wasmhost serve --workers 2` in its own session (so a test can signal its whole process group)."""

    def __init__(self, *args: str) -> None:
        port = free_port()
        super().__init__(
            [sys.executable, "-m", "wasmhost", "serve", *args, "--workers", "2", "--addr", f"127.0.0.1:{port}",
             "--cache-dir", str(CACHE_DIR)],
            port, start_new_session=True,
        )

    def workers(self, expected: int = 2, timeout: float = 30) -> list[int]:
        """The parent's children that hold a listening socket, once ``expected`` of them do
        (spawned workers receive their sockets while they start up)."""
        deadline = time.monotonic() + timeout
        while len(found := self._workers()) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return found

    def _workers(self) -> list[int]:
        sockets = {f"socket:[{inode}]" for inode in _listening_inodes(self.port)}
        found = []
        for pid in _children(self.proc.pid):
            try:
                links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            except OSError:
                continue
            if links & sockets:
                found.append(pid)
        return sorted(found)

    def counts(self, requests: int) -> list[int]:
        """``/count`` on ``requests`` new connections (each may land on either worker)."""
        results = [self.get("/count") for _ in range(requests)]
        assert all(status == 200 for status, _ in results)
        return [int(body) for _, body in results]


@pytest.fixture
def workers_server(guest) -> Iterator[Workers]:
    server = Workers(str(guest("misbehave")), "--max-instances", "1", "--idle-instance-timeout", "60s")
    try:
        yield server
    finally:
        server.stop()


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # fields after "(comm)": state, ppid, ...
                found.add(int(entry))
    return found


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def _gone(pids: set[int], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{pid}") for pid in pids):
            return True
        time.sleep(0.05)
    return False


@needs_proc
def test_two_processes_serve_the_same_port_each_with_its_own_instances(workers_server: Workers) -> None:
    server = workers_server
    workers = server.workers()
    assert len(workers) == 2 and server.proc.pid not in workers
    # The kernel spreads new connections over the workers' sockets. /count is
    # per instance and each worker has one (--max-instances 1), so the counts
    # seen are 1..a from one worker and 1..b from the other, a + b = requests.
    counts = sorted(server.counts(24))
    twice = sum(1 for n in set(counts) if counts.count(n) == 2)
    a = len(set(counts))
    b = twice
    assert b >= 1, f"every request went to one worker: {counts}"  # 2**-23 by chance
    assert counts == sorted([*range(1, a + 1), *range(1, b + 1)]), counts
    _, err = server.stop()
    assert err.count("Serving HTTP on") == 1
    assert f"Serving HTTP on http://127.0.0.1:{server.port}/ (2 workers)\n" in err


@needs_proc
@pytest.mark.parametrize("how", ["SIGTERM to the parent", "SIGINT to the parent", "Ctrl-C (SIGINT to the group)"])
def test_signal_finishes_requests_in_flight_and_leaves_no_process(workers_server: Workers, how: str) -> None:
    server = workers_server
    workers = server.workers()
    assert len(workers) == 2
    for _ in range(8):  # new connections: both workers very likely serving, so the stop is a graceful one
        assert server.get("/") == (200, b"ok\n")
    children = _children(server.proc.pid)
    result: dict[str, tuple[int, bytes]] = {}
    request = threading.Thread(target=lambda: result.setdefault("r", server.get("/sleep?ms=800")))
    request.start()
    time.sleep(0.3)
    if how.startswith("Ctrl-C"):
        os.killpg(server.proc.pid, signal.SIGINT)
    else:
        server.proc.send_signal(signal.SIGTERM if "SIGTERM" in how else signal.SIGINT)
    request.join(10)
    assert result["r"] == (200, b"slept 800 ms\n")
    assert server.proc.wait(timeout=30) == 0
    assert _gone(children), f"left behind: {[pid for pid in children if os.path.exists(f'/proc/{pid}')]}"
    _, err = server.proc.communicate()
    assert "Traceback" not in err and "error" not in err.lower(), err


@needs_proc
def test_a_worker_dying_stops_the_others(workers_server: Workers) -> None:
    server = workers_server
    first, second = server.workers()
    os.kill(first, signal.SIGKILL)
    assert server.proc.wait(timeout=30) == 1
    assert _gone({second})
    _, err = server.proc.communicate()
    assert re.search(rf"^worker \d \(pid {first}\) was killed by SIGKILL; stopping the others$", err, re.MULTILINE), err


def test_bad_component_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.wasm"
    path.write_bytes(b"hello, I am text\n")
    result = run_cli("serve", str(path), "--workers", "2", "--addr", f"127.0.0.1:{free_port()}", "--no-cache")
    assert result.returncode == 2
    assert result.stderr == f"wasmhost: error: {path} is not a WebAssembly file\n"
    assert result.stdout == ""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_busy_port_exits_2_with_one_line(workers: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--workers", workers, "--addr", f"127.0.0.1:{port}", "--cache-dir", str(CACHE_DIR))
    assert result.returncode == 2
    assert result.stderr == f"wasmhost: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_workers_must_be_at_least_1() -> None:
    result = run_cli("serve", "--workers", "0")
    assert result.returncode == 2 and result.stderr.startswith("wasmhost: error: --workers: ")
    assert result.stderr.count("\n") == 1
