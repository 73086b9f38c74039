"""Unit tests for the clocks, random, cli, filesystem and sockets WASI modules.

They call the host functions directly with a real WasiCtx; no wasm involved.
"""
from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path

import pytest

from wasmhost.wasi import cli, clocks, filesystem, random, sockets
from wasmhost.wasi.ctx import GuestExit, GuestInterrupted, WasiConfig, WasiCtx
from wasmhost.wasi.interface import Case, Err, HostInterface, Ok, Trap
from wasmhost.wasi.io_error import IoError
from wasmhost.wasi.io_poll import Pollable, poll
from wasmhost.wasi.io_streams import (
    EmptyInputStream,
    SinkOutputStream,
    input_read,
    output_blocking_write_and_flush,
)

MODULES = (clocks, random, cli, filesystem, sockets)
REPO_WIT_DEPS = Path(__file__).resolve().parent.parent / "wit" / "deps"


@pytest.fixture
def ctx() -> WasiCtx:
    return WasiCtx(
        WasiConfig(env=(("A", "1"),), args=("app", "--flag")),
        stdout=io.BytesIO(),
        stderr=io.BytesIO(),
    )


def call(iface: HostInterface, name: str, ctx: WasiCtx, *args: object) -> object:
    return iface.functions[name](ctx, *args)


# -- clocks ---------------------------------------------------------------------------

def test_monotonic_now_is_the_pollable_clock(ctx: WasiCtx) -> None:
    before = time.monotonic_ns()
    now = call(clocks.monotonic_clock, "now", ctx)
    after = time.monotonic_ns()
    assert before <= now <= after
    assert call(clocks.monotonic_clock, "now", ctx) >= now
    assert call(clocks.monotonic_clock, "resolution", ctx) >= 1


def test_subscribe_duration_becomes_ready_after_the_duration(ctx: WasiCtx) -> None:
    pollable = call(clocks.monotonic_clock, "subscribe-duration", ctx, 50_000_000)
    assert isinstance(pollable, Pollable)
    assert not pollable.is_ready()
    start = time.monotonic()
    pollable.block(ctx)
    assert time.monotonic() - start >= 0.045
    assert pollable.is_ready()


def test_subscribe_instant(ctx: WasiCtx) -> None:
    past = call(clocks.monotonic_clock, "subscribe-instant", ctx, 0)
    assert past.is_ready()
    soon = time.monotonic_ns() + 30_000_000
    future = call(clocks.monotonic_clock, "subscribe-instant", ctx, soon)
    assert not future.is_ready()
    assert poll(ctx, [future, past]) == [1]
    future.block(ctx)
    assert time.monotonic_ns() >= soon


def test_unrepresentable_duration_waits_forever_until_interrupted(ctx: WasiCtx) -> None:
    pollable = call(clocks.monotonic_clock, "subscribe-duration", ctx, 2**64 - 1)
    assert not pollable.is_ready()
    timer = threading.Timer(0.05, ctx.interrupt, args=("request timeout",))
    timer.start()
    try:
        with pytest.raises(GuestInterrupted):
            pollable.block(ctx)
    finally:
        timer.cancel()


def test_wall_clock(ctx: WasiCtx) -> None:
    now = call(clocks.wall_clock, "now", ctx)
    assert set(now) == {"seconds", "nanoseconds"}
    assert 0 <= now["nanoseconds"] < 1_000_000_000
    assert abs(now["seconds"] + now["nanoseconds"] / 1e9 - time.time()) < 5
    resolution = call(clocks.wall_clock, "resolution", ctx)
    assert 0 <= resolution["nanoseconds"] < 1_000_000_000
    assert resolution["seconds"] * 1_000_000_000 + resolution["nanoseconds"] >= 1


# -- random ----------------------------------------------------------------------------

@pytest.mark.parametrize("length", [0, 1, 7, 4096, 100_000])
def test_random_lengths_are_honoured(ctx: WasiCtx, length: int) -> None:
    secure = call(random.random_interface, "get-random-bytes", ctx, length)
    insecure = call(random.insecure, "get-insecure-random-bytes", ctx, length)
    assert isinstance(secure, bytes) and len(secure) == length
    assert isinstance(insecure, bytes) and len(insecure) == length


def test_random_bytes_differ_between_calls(ctx: WasiCtx) -> None:
    a = call(random.random_interface, "get-random-bytes", ctx, 32)
    b = call(random.random_interface, "get-random-bytes", ctx, 32)
    assert a != b


def test_absurd_random_lengths_trap(ctx: WasiCtx) -> None:
    for iface, name in ((random.random_interface, "get-random-bytes"), (random.insecure, "get-insecure-random-bytes")):
        assert len(call(iface, name, ctx, random.MAX_RANDOM_LEN)) == random.MAX_RANDOM_LEN
        with pytest.raises(Trap):
            call(iface, name, ctx, random.MAX_RANDOM_LEN + 1)
        with pytest.raises(Trap):
            call(iface, name, ctx, 2**64 - 1)


def test_random_u64s(ctx: WasiCtx) -> None:
    for iface, name in ((random.random_interface, "get-random-u64"), (random.insecure, "get-insecure-random-u64")):
        values = {call(iface, name, ctx) for _ in range(8)}
        assert all(0 <= v < 2**64 for v in values)
        assert len(values) > 1


def test_insecure_seed_is_stable_per_store(ctx: WasiCtx) -> None:
    seed = call(random.insecure_seed_interface, "insecure-seed", ctx)
    assert seed == ctx.insecure_seed == call(random.insecure_seed_interface, "insecure-seed", ctx)
    assert isinstance(seed, tuple) and len(seed) == 2
    assert all(0 <= part < 2**64 for part in seed)


# -- cli --------------------------------------------------------------------------------

def test_environment_is_exactly_the_configured_env(ctx: WasiCtx) -> None:
    assert call(cli.environment, "get-environment", ctx) == [("A", "1")]
    assert call(cli.environment, "get-arguments", ctx) == ["app", "--flag"]
    assert call(cli.environment, "initial-cwd", ctx) is None


def test_empty_environment_does_not_leak_host_env() -> None:
    bare = WasiCtx(WasiConfig(), stdout=io.BytesIO(), stderr=io.BytesIO())
    assert call(cli.environment, "get-environment", bare) == []


@pytest.mark.parametrize(("status", "code"), [(Ok(None), 0), (Err(None), 1)])
def test_exit(ctx: WasiCtx, status: object, code: int) -> None:
    with pytest.raises(GuestExit) as raised:
        call(cli.exit_interface, "exit", ctx, status)
    assert raised.value.code == code
    assert isinstance(raised.value, Trap)


@pytest.mark.parametrize("code", [0, 3, 255])
def test_exit_with_code(ctx: WasiCtx, code: int) -> None:
    with pytest.raises(GuestExit) as raised:
        call(cli.exit_interface, "exit-with-code", ctx, code)
    assert raised.value.code == code


def test_stdin_is_closed(ctx: WasiCtx) -> None:
    stream = call(cli.stdin, "get-stdin", ctx)
    assert isinstance(stream, EmptyInputStream)
    assert call(cli.stdin, "get-stdin", ctx) is not stream
    with pytest.raises(Err) as raised:
        input_read(ctx, stream, 10)
    assert raised.value.value == Case("closed")


def test_stdout_and_stderr_write_lines_to_the_sinks(ctx: WasiCtx) -> None:
    ctx.request_id = 7
    out = call(cli.stdout, "get-stdout", ctx)
    out2 = call(cli.stdout, "get-stdout", ctx)
    err = call(cli.stderr, "get-stderr", ctx)
    assert isinstance(out, SinkOutputStream) and out is not out2
    assert out.sink is out2.sink is ctx.stdout and err.sink is ctx.stderr
    output_blocking_write_and_flush(ctx, out, b"hel")
    output_blocking_write_and_flush(ctx, out2, b"lo\n")
    output_blocking_write_and_flush(ctx, err, b"oops\n")
    assert ctx.stdout.out.getvalue() == b"stdout [7] :: hello\n"
    assert ctx.stderr.out.getvalue() == b"stderr [7] :: oops\n"


def test_no_terminals(ctx: WasiCtx) -> None:
    assert call(cli.terminal_stdin, "get-terminal-stdin", ctx) is None
    assert call(cli.terminal_stdout, "get-terminal-stdout", ctx) is None
    assert call(cli.terminal_stderr, "get-terminal-stderr", ctx) is None
    assert cli.terminal_input.resources == {"terminal-input": cli.TerminalInput}
    assert cli.terminal_output.resources == {"terminal-output": cli.TerminalOutput}


# -- filesystem ---------------------------------------------------------------------

def test_no_preopens(ctx: WasiCtx) -> None:
    assert call(filesystem.preopens, "get-directories", ctx) == []


def test_filesystem_error_code_of_a_stream_error(ctx: WasiCtx) -> None:
    assert call(filesystem.types, "filesystem-error-code", ctx, IoError("connection reset")) is None


def test_descriptor_methods_answer_bad_descriptor(ctx: WasiCtx) -> None:
    descriptor = filesystem.Descriptor()
    for name, fn in filesystem.types.functions.items():
        if not name.startswith("[method]descriptor.") or name.endswith(".is-same-object"):
            continue
        with pytest.raises(Err) as raised:
            fn(ctx, descriptor, 0, 0)
        assert raised.value.value == "bad-descriptor", name
    with pytest.raises(Err) as raised:
        call(
            filesystem.types,
            "[method]directory-entry-stream.read-directory-entry",
            ctx,
            filesystem.DirectoryEntryStream(),
        )
    assert raised.value.value == "bad-descriptor"
    with pytest.raises(Trap):
        call(filesystem.types, "[method]descriptor.is-same-object", ctx, descriptor, descriptor)


# -- sockets --------------------------------------------------------------------------

def test_instance_network_returns_a_new_network(ctx: WasiCtx) -> None:
    network = call(sockets.instance_network_interface, "instance-network", ctx)
    assert isinstance(network, sockets.Network)
    assert call(sockets.instance_network_interface, "instance-network", ctx) is not network
    assert sockets.network_interface.resources == {"network": sockets.Network}


@pytest.mark.parametrize("name", ["example.com", "127.0.0.1", "::1"])
def test_name_lookup_is_refused(ctx: WasiCtx, name: str) -> None:
    network = call(sockets.instance_network_interface, "instance-network", ctx)
    with pytest.raises(Err) as raised:
        call(sockets.ip_name_lookup, "resolve-addresses", ctx, network, name)
    assert raised.value.value == "access-denied"


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_socket_creation_is_refused(ctx: WasiCtx, family: str) -> None:
    for iface, name in (
        (sockets.tcp_create_socket_interface, "create-tcp-socket"),
        (sockets.udp_create_socket_interface, "create-udp-socket"),
    ):
        with pytest.raises(Err) as raised:
            call(iface, name, ctx, family)
        assert raised.value.value == "access-denied"


def test_socket_resource_methods_trap(ctx: WasiCtx) -> None:
    methods = 0
    for iface in (sockets.ip_name_lookup, sockets.tcp, sockets.udp):
        for name, fn in iface.functions.items():
            if not name.startswith("[method]"):
                continue
            methods += 1
            with pytest.raises(Trap, match="never creates sockets"):
                fn(ctx, object(), 1)
    assert methods == 2 + 28 + 13 + 2 + 3


# -- registration against the WIT ---------------------------------------------------

_PACKAGE = re.compile(r"^\s*package\s+([\w-]+:[\w-]+)@")
_BLOCK = re.compile(r"^\s*(interface|resource|world)\s+%?([\w-]+)\s*\{")
_EMPTY_RESOURCE = re.compile(r"^\s*resource\s+%?([\w-]+)\s*;")
_FUNC = re.compile(r"^\s*%?([\w-]+)\s*:\s*(static\s+)?func\b")
_CONSTRUCTOR = re.compile(r"^\s*constructor\s*\(")
_IMPORT = re.compile(r"^\s*import\s+%?([\w-]+)\s*;")


def parse_wit(text: str) -> tuple[str, dict[str, tuple[set[str], set[str]]], set[str]]:
    """Package name, {interface: (function import names, resources)}, local world imports.

    Items marked ``@unstable`` (and everything inside an unstable interface)
    are left out. Enough of WIT for the package.wit files of wasi 0.2.x.
    """
    package = ""
    interfaces: dict[str, tuple[set[str], set[str]]] = {}
    world_imports: set[str] = set()
    stack: list[tuple[str, str, bool]] = []  # (kind, name, unstable)
    unstable_next = False
    for line in text.splitlines():
        stripped = line.split("//", 1)[0].strip()
        if not stripped:
            continue
        if stripped.startswith("@"):
            unstable_next = unstable_next or stripped.startswith("@unstable")
            continue
        unstable = unstable_next or any(frame[2] for frame in stack)
        unstable_next = False
        if match := _PACKAGE.match(stripped):
            package = match.group(1)
        elif match := _BLOCK.match(stripped):
            kind, name = match.groups()
            if kind == "interface" and not unstable:
                interfaces[name] = (set(), set())
            elif kind == "resource" and not unstable:
                interfaces[stack[-1][1]][1].add(name)
            stack.append((kind, name, unstable))
            continue
        elif match := _EMPTY_RESOURCE.match(stripped):
            if not unstable:
                interfaces[stack[-1][1]][1].add(match.group(1))
        elif stack and stack[-1][0] in ("interface", "resource") and not unstable:
            owner = stack[-1]
            iface = next(frame[1] for frame in reversed(stack) if frame[0] == "interface")
            if match := _FUNC.match(stripped):
                name, static = match.groups()
                if owner[0] == "interface":
                    interfaces[iface][0].add(name)
                else:
                    interfaces[iface][0].add(f"[{'static' if static else 'method'}]{owner[1]}.{name}")
            elif _CONSTRUCTOR.match(stripped) and owner[0] == "resource":
                interfaces[iface][0].add(f"[constructor]{owner[1]}")
        elif stack and stack[-1] == ("world", "imports", False) and (match := _IMPORT.match(stripped)):
            if not unstable:
                world_imports.add(match.group(1))
        stack_delta = stripped.count("{") - stripped.count("}")
        if stack_delta > 0:
            stack.extend([("other", "", unstable)] * stack_delta)
        elif stack_delta < 0:
            del stack[stack_delta:]
    return package, interfaces, world_imports


def test_parse_wit_handles_resources_and_unstable_items() -> None:
    package, interfaces, imports = parse_wit(
        """
        package wasi:demo@0.2.12;
        interface a {
            record r {
                f: string,
            }
            resource res {
                constructor(x: u32);
                m: func(
                    y: u32,
                ) -> result<_, u8>;
                %stream: func();
                from-x: static func(x: u32) -> res;
            }
            resource bare;
            top: func();
            @unstable(feature = x)
            hidden: func();
        }
        @unstable(feature = y)
        interface b {
            f: func();
        }
        interface run {
            run: func();
        }
        world imports {
            import a;
            @unstable(feature = y)
            import b;
        }
        """
    )
    assert package == "wasi:demo"
    assert interfaces["a"] == (
        {"[constructor]res", "[method]res.m", "[method]res.stream", "[static]res.from-x", "top"},
        {"res", "bare"},
    )
    assert "b" not in interfaces
    assert imports == {"a"}


def _repo_wit_packages() -> list[Path]:
    return sorted(REPO_WIT_DEPS.glob("*/package.wit"))


@pytest.mark.skipif(
    not _repo_wit_packages(),
    reason=f"no WIT copy in the repository ({REPO_WIT_DEPS}/*/package.wit); cannot check registration against it",
)
def test_every_function_of_every_imported_interface_is_registered() -> None:
    provided = {iface.name: iface for module in MODULES for iface in module.INTERFACES}
    expected: dict[str, tuple[set[str], set[str]]] = {}
    for path in _repo_wit_packages():
        package, interfaces, imports = parse_wit(path.read_text())
        if package not in ("wasi:clocks", "wasi:random", "wasi:cli", "wasi:filesystem", "wasi:sockets"):
            continue
        for name in imports:  # exports such as wasi:cli/run are the guest's, not ours
            expected[f"{package}/{name}"] = interfaces[name]
    assert expected, "none of the clocks/random/cli/filesystem/sockets packages found"
    assert set(provided) == set(expected)
    for name, (functions, resources) in expected.items():
        assert set(provided[name].functions) == functions, name
        assert set(provided[name].resources) == resources, name


def test_interfaces_are_exposed_once() -> None:
    names = [iface.name for module in MODULES for iface in module.INTERFACES]
    assert len(names) == len(set(names))
    assert all(isinstance(iface, HostInterface) for module in MODULES for iface in module.INTERFACES)


def test_guest_output_checks_whether_a_write_could_block_only_where_it_can(tmp_path: Path) -> None:
    import os

    from wasmhost.wasi.ctx import _write_readiness

    assert _write_readiness(io.BytesIO()) is None  # in memory: never waits
    with open(tmp_path / "out.log", "wb") as regular:
        assert _write_readiness(regular) is None  # a regular file: never waits for a reader
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as pipe, os.fdopen(read_end, "rb"):
        ready = _write_readiness(pipe)
        assert ready is not None
        assert ready(100)
        assert not ready(1 << 20)  # more than the pipe takes at once: it could wait part-way
        os.set_blocking(write_end, False)
        with pytest.raises(BlockingIOError):
            while True:
                os.write(write_end, b"x" * 4096)  # fill the pipe
        assert not ready(1)
