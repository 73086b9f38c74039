"""Instructions per request of a real wasmhost server, counted by callgrind.

    python benchmarks/instructions.py [--requests N] [GUEST ...]   # default: wat-hello hello

Requests per second on a shared 2-core VM drift by up to 1.5x within
minutes; instruction counts do not (two runs agree within ~1%). For each
guest, and for a bare aiohttp handler returning a constant (the floor of
Python's HTTP stack), the server runs under ``valgrind --tool=callgrind``
twice, serving N and then 3N requests from ``hey -c 10`` on a reused
instance; the difference over 2N requests is the steady per-request cost,
start-up excluded. It is split by where the instructions ran:

- ``wasm``: the guest's compiled code (JIT code has no object file);
- ``wasmtime``: wasmtime's library: calls, the C API's value conversions;
- ``python``: the interpreter and extension modules (aiohttp's, ours);
- ``libc``: mostly malloc/free on behalf of the two above.

Instructions are not time: the guest's and Python's working sets miss the
caches often (about 0.8 instructions per cycle here), and kernel time
(sockets, epoll, futexes) is not counted. Needs valgrind and hey
(``apt-get install valgrind hey``); a run takes about a minute per guest.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BARE_AIOHTTP = """
import sys
from aiohttp import web
async def hello(request): return web.Response(text="Hello, world!")
app = web.Application()
app.router.add_get("/", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""

# callgrind_annotate's per-function lines: "<count> (<pct>)  <file>:<function> [<object>]"
_LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[(.+)\])?$")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not answer {url} within {timeout:.0f} s")


def _by_object(out_file: str) -> Counter[str]:
    """Instructions per object file (``wasm`` for code without one) from a callgrind profile."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--inclusive=no", out_file],
        capture_output=True, text=True, check=True,
    ).stdout
    totals: Counter[str] = Counter()
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None or match.group(2).startswith("=>") or match.group(2) == "PROGRAM TOTALS":
            continue
        totals[_category(match.group(2), match.group(3))] += int(match.group(1).replace(",", ""))
    return totals


def _category(function: str, obj: str | None) -> str:
    if obj is None:
        # Code inlined from a header: the object is not named, its source path tells
        # (CPython's build tree, or /project/ for extension wheels; glibc's are relative).
        source = function.split(":", 1)[0]
        return "python" if "Python" in source or source.startswith("/project/") else "libc"
    name = obj.rsplit("/", 1)[-1]
    if name == "???":
        return "wasm"
    if "libwasmtime" in name:
        return "wasmtime"
    if name.startswith(("libc.", "libm.", "ld-linux", "libpthread")):
        return "libc"
    return "python"


def _profile(command: list[str], port: int, requests: int, out_file: str) -> Counter[str]:
    log_file = out_file + ".log"
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", "--smc-check=all-non-file", *command],
            stdout=subprocess.DEVNULL, stderr=log,
        )
        try:
            url = f"http://127.0.0.1:{port}/"
            _wait_until_serving(url, process)
            subprocess.run(["hey", "-n", str(requests), "-c", "10", "-t", "120", url], check=True, capture_output=True)
        finally:
            process.send_signal(signal.SIGINT)  # Ctrl-C: the server shuts down, callgrind writes its file
            process.wait(timeout=300)
    if not os.path.exists(out_file):
        raise SystemExit(f"callgrind wrote no profile (exit status {process.returncode}):\n"
                         + Path(log_file).read_text(errors="replace")[-2000:])
    return _by_object(out_file)


def per_request(command: list[str], port: int, requests: int) -> Counter[str]:
    """Steady-state instructions per request by category: runs N and 3N requests, takes the difference."""
    with tempfile.TemporaryDirectory() as tmp:
        small = _profile(command, port, requests, f"{tmp}/small.out")
        large = _profile(command, port, 3 * requests, f"{tmp}/large.out")
    return Counter({key: round((large[key] - small[key]) / (2 * requests)) for key in large | small})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("guests", nargs="*", default=["wat-hello", "hello"])
    parser.add_argument("--requests", type=int, default=300, help="N (default 300): runs serve N and 3N requests")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_annotate", "hey"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install valgrind hey)")
    from guests.build import build_guest

    # The interpreter itself, not a wrapper script (valgrind would trace the wrapper).
    python = os.path.realpath(sys.executable)
    rows: list[tuple[str, Counter[str]]] = []
    port = _free_port()
    bare = Path(tempfile.mkdtemp()) / "bare_aiohttp.py"
    bare.write_text(BARE_AIOHTTP)
    rows.append(("bare aiohttp handler", per_request([python, str(bare), str(port)], port, args.requests)))
    for guest in args.guests:
        component = str(build_guest(guest))
        command = [python, "-m", "wasmhost", "serve", component, "--addr", f"127.0.0.1:{port}"]
        rows.append((f"wasmhost serve {guest}", per_request(command, port, args.requests)))
    columns = ["python", "wasmtime", "wasm", "libc"]
    print("| server | " + " | ".join(columns) + " | total |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for name, counts in rows:
        cells = [f"{counts[column] / 1000:.0f}k" for column in columns]
        print(f"| {name} | " + " | ".join(cells) + f" | {sum(counts.values()) / 1000:.0f}k |")


if __name__ == "__main__":
    main()
