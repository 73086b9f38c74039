"""``--profile guest[,PATH]``: one trace file per instance, in Chrome's Trace Event format.

Each file shows one instance's life on a timeline: its instantiation, every
request it served, and inside each request every host call (the gaps
between them are time in wasm). Each request slice also carries totals:
time in wasm, time in each host function. Open the files with
https://ui.perfetto.dev or https://profiler.firefox.com (both load Trace
Event JSON), or ``chrome://tracing``.

The C guest profiler of wasmtime takes core modules only, not components,
so wasm-level frames are not sampled; ``--profile perfmap`` lets ``perf``
name JIT frames instead.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

_ns = time.perf_counter_ns


class ProfileRecorder:
    """Events of one instance; written once, when its worker exits."""

    __slots__ = ("path", "instance_label", "_events", "_origin", "_request", "_host_ns", "_written", "_tid")

    def __init__(self, path: Path, instance_label: str) -> None:
        self.path = path
        self.instance_label = instance_label
        self._events: list[dict[str, Any]] = []
        self._origin = _ns()
        self._request: tuple[int, int] | None = None  # (req_id, start ns)
        self._host_ns: dict[str, int] = defaultdict(int)
        self._written = False
        self._tid = threading.get_ident()

    def _us(self, ns: int) -> float:
        return (ns - self._origin) / 1000.0

    def _slice(self, name: str, cat: str, start: int, end: int, args: dict[str, Any] | None = None) -> None:
        event: dict[str, Any] = {
            "name": name, "cat": cat, "ph": "X", "pid": 1, "tid": 1,
            "ts": self._us(start), "dur": (end - start) / 1000.0,
        }
        if args:
            event["args"] = args
        self._events.append(event)

    def instantiated(self, start_ns: int, end_ns: int) -> None:
        self._slice("instantiate", "instance", start_ns, end_ns)

    def request_started(self, req_id: int) -> None:
        self._request = (req_id, _ns())
        self._host_ns.clear()

    def request_finished(self, error: str | None = None) -> None:
        if self._request is None:
            return
        req_id, start = self._request
        end = _ns()
        host_total = sum(self._host_ns.values())
        args: dict[str, Any] = {
            "wasm_us": round((end - start - host_total) / 1000.0, 1),
            "host_us": {name: round(ns / 1000.0, 1) for name, ns in sorted(self._host_ns.items())},
        }
        if error:
            args["error"] = error
        self._slice(f"request {req_id}", "request", start, end, args)
        self._request = None

    def host_call(self, name: str, start_ns: int, end_ns: int) -> None:
        self._host_ns[name] += end_ns - start_ns
        self._slice(name, "host", start_ns, end_ns)

    def write(self) -> None:
        """Write the trace file (once; later calls do nothing)."""
        if self._written:
            return
        self._written = True
        trace = {
            "displayTimeUnit": "ms",
            "traceEvents": [
                {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "wasmhost"}},
                {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": self.instance_label}},
                *self._events,
            ],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(trace))
        os.replace(tmp, self.path)


class GuestProfiler:
    """Hands out one recorder per instance, each writing ``PATH/wasmhost-<pid>-<n>.json``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._count = 0
        self._lock = threading.Lock()

    def recorder(self) -> ProfileRecorder:
        with self._lock:
            self._count += 1
            number = self._count
        path = self.directory / f"wasmhost-{os.getpid()}-instance-{number}.json"
        return ProfileRecorder(path, f"instance {number}")


def guest_profiler(profile: str | None) -> GuestProfiler | None:
    """``guest`` or ``guest,PATH`` -> a profiler (default folder ``./profiles``); else None."""
    if not profile:
        return None
    kind, _, where = profile.partition(",")
    if kind != "guest":
        return None
    return GuestProfiler(Path(where or "profiles"))
