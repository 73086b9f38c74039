"""Every kind of WIT value survives host -> guest -> host through the binding.

A small WAT component imports ``get: func() -> tuple<T, pad>`` and
``put: func(x: T, pad: pad)`` and its ``run`` passes what ``get`` returned
straight to ``put``. ``pad`` (16 u8s) pushes both signatures over the
canonical ABI's flat limits, so the guest moves the value through memory
unchanged: what ``put`` receives is what our lowerer wrote, read back by our
lifter. Run for the compiled binding and the pure-Python one.
"""
from __future__ import annotations

from typing import Any

import pytest
from wasmtime import Store
from wasmtime import component as wc

from wasmhost.binding import native
from wasmhost.binding.linker import HostLinker
from wasmhost.engine import EngineOptions, build_engine
from wasmhost.wasi.ctx import WasiConfig, WasiCtx
from wasmhost.wasi.interface import Case, Err, HostInterface, Ok

PAD_TYPE = "(tuple " + " ".join(["u8"] * 16) + ")"
PAD = tuple(range(16))

COMPONENT = """(component
  (import "test:x/h" (instance $h
    (type $t {wit_type})
    (export "t" (type $te (eq $t)))
    (export "get" (func (result (tuple $te {pad}))))
    (export "put" (func (param "x" $te) (param "pad" {pad})))))
  (core module $libc
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $next (i32.add (local.get $p) (local.get 3)))
      (local.get $p)))
  (core instance $libc (instantiate $libc))
  (alias core export $libc "memory" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))
  (core func $get (canon lower (func $h "get") (memory $mem) (realloc $realloc)))
  (core func $put (canon lower (func $h "put") (memory $mem)))
  (core module $m
    (import "h" "get" (func $get (param i32)))
    (import "h" "put" (func $put (param i32)))
    (func (export "run") (call $get (i32.const 64)) (call $put (i32.const 64))))
  (core instance $i (instantiate $m (with "h" (instance (export "get" (func $get)) (export "put" (func $put))))))
  (func (export "run") (canon lift (core func $i "run")))
)"""

CASES: list[tuple[str, str, Any]] = [
    ("bool", "bool", True),
    ("s8", "s8", -5),
    ("u8", "u8", 200),
    ("s16", "s16", -300),
    ("u16", "u16", 60000),
    ("s32", "s32", -70000),
    ("u32", "u32", 4_000_000_000),
    ("s64", "s64", -(2**40)),
    ("u64", "u64", 2**63 + 5),
    ("f32", "f32", 1.5),
    ("f64", "f64", -2.25),
    ("char", "char", "😀"),
    ("string", "string", "héllo wörld"),
    ("empty-string", "string", ""),
    ("bytes", "(list u8)", b"\x00\xffabc"),
    ("empty-bytes", "(list u8)", b""),
    ("strings", "(list string)", ["a", "bc", ""]),
    ("header-list", "(list (tuple string (list u8)))", [("content-type", b"text/plain"), ("x", b"")]),
    ("record", '(record (field "a" u32) (field "b-c" string))', {"a": 7, "b-c": "x"}),
    ("tuple", "(tuple f64 char bool)", (0.5, "z", False)),
    ("variant-payload", '(variant (case "none") (case "num" u64) (case "text" string))', Case("num", 42)),
    ("variant-bare", '(variant (case "none") (case "num" u64) (case "text" string))', Case("none", None)),
    ("enum", '(enum "red" "green" "blue")', "green"),
    ("option-none", "(option u32)", None),
    ("option-some", "(option string)", "some"),
    ("result-ok", "(result string (error u8))", Ok("fine")),
    ("result-err", "(result string (error u8))", Err(3)),
    ("result-unit", "(result)", Ok(None)),
    ("flags", '(flags "x" "y" "z")', frozenset({"x", "z"})),
    ("nested", '(list (option (tuple string (result u32 (error string)))))', [None, ("k", Ok(1)), ("e", Err("bad"))]),
]

BINDINGS = [
    pytest.param(True, id="compiled", marks=pytest.mark.skipif(native.module is None, reason="not built")),
    pytest.param(False, id="pure-python"),
]


def round_trip(wit_type: str, value: Any, compiled: bool) -> Any:
    engine = build_engine(EngineOptions())
    component = wc.Component(engine, COMPONENT.format(wit_type=wit_type, pad=PAD_TYPE))
    received: list[tuple[Any, Any]] = []
    iface = HostInterface("test:x/h")
    iface.functions["get"] = lambda ctx: (value, PAD)
    iface.functions["put"] = lambda ctx, x, pad: received.append((x, pad))
    host = HostLinker(engine, [iface], compiled=compiled)
    linker = host.link(component)
    store = Store(engine)
    store.set_epoch_deadline(1 << 40)
    host.bind_store(store, WasiCtx(WasiConfig()))
    run = linker.instantiate(store, component).get_func(store, "run")
    assert run is not None
    run(store)
    assert len(received) == 1
    x, pad = received[0]
    assert pad == PAD
    return x


@pytest.mark.parametrize("compiled", BINDINGS)
@pytest.mark.parametrize(("wit_type", "value"), [(t, v) for _, t, v in CASES], ids=[c[0] for c in CASES])
def test_value_round_trip(wit_type: str, value: Any, compiled: bool) -> None:
    back = round_trip(wit_type, value, compiled)
    assert back == value
    assert type(back) is type(value)


@pytest.mark.parametrize("compiled", BINDINGS)
@pytest.mark.parametrize(
    ("wit_type", "bad", "message"),
    [
        ("u8", 256, "out of range|256"),
        ("string", b"bytes", "str|string"),
        ('(enum "red" "green")', "purple", "purple"),
        ('(flags "x")', {"w"}, "w"),
        ("(result u32)", 5, "Ok|Err|result"),
    ],
)
def test_bad_host_values_trap_with_a_clear_error(
    wit_type: str, bad: Any, message: str, compiled: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    from wasmtime import WasmtimeError

    with pytest.raises(WasmtimeError, match=r"test:x/h#get: host error"):
        round_trip(wit_type, bad, compiled)
    assert any(__import__("re").search(message, r.getMessage()) for r in caplog.records)
