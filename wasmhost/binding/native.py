"""The compiled hot path (``_native``), when it is built, and the specs it runs on.

``_native`` is an optional C extension (see ``_native.c``): the host-call
trampoline, the resource destructor, guest calls that keep the GIL for their
first epoch ticks, and a native epoch ticker. Without it (no C compiler at
install time, or ``WASMHOST_PURE_PYTHON=1``) the binding runs on the
pure-Python trampolines in ``linker.py`` with the same behaviour, slower.

A *spec* describes one WIT type to the C converters as nested tuples, built
once at link time from wasmtime-py's type objects (codes match ``_native.c``).
"""
from __future__ import annotations

import ctypes
import os
from types import ModuleType
from typing import Any, Callable

from wasmtime import component as wc

from ..wasi.interface import Case, Err, HostResource, Ok, Trap
from . import capi

(T_BOOL, T_S8, T_U8, T_S16, T_U16, T_S32, T_U32, T_S64, T_U64, T_F32, T_F64, T_CHAR,
 T_STRING, T_LIST, T_RECORD, T_TUPLE, T_VARIANT, T_ENUM, T_OPTION, T_RESULT, T_FLAGS,
 T_OWN, T_BORROW, T_BYTES) = range(24)

_SCALAR_CODES: dict[type, int] = {
    wc.Bool: T_BOOL, wc.S8: T_S8, wc.U8: T_U8, wc.S16: T_S16, wc.U16: T_U16,
    wc.S32: T_S32, wc.U32: T_U32, wc.S64: T_S64, wc.U64: T_U64,
    wc.F32: T_F32, wc.F64: T_F64, wc.Char: T_CHAR, wc.String: T_STRING,
}

# wasmtime's kind byte for each spec code up to T_OWN (a resource).
_KINDS = (
    capi.K_BOOL, capi.K_S8, capi.K_U8, capi.K_S16, capi.K_U16, capi.K_S32, capi.K_U32,
    capi.K_S64, capi.K_U64, capi.K_F32, capi.K_F64, capi.K_CHAR, capi.K_STRING, capi.K_LIST,
    capi.K_RECORD, capi.K_TUPLE, capi.K_VARIANT, capi.K_ENUM, capi.K_OPTION, capi.K_RESULT,
    capi.K_FLAGS, capi.K_RESOURCE, capi.K_RESOURCE,
)

_ENTRY_POINTS = (
    "wasm_byte_vec_new", "wasm_byte_vec_delete",
    "wasmtime_component_vallist_new_uninit", "wasmtime_component_valtuple_new_uninit",
    "wasmtime_component_valrecord_new_uninit", "wasmtime_component_valflags_new_uninit",
    "wasmtime_component_val_new", "wasmtime_component_resource_host_new",
    "wasmtime_component_resource_host_rep", "wasmtime_component_resource_host_delete",
    "wasmtime_component_resource_host_to_any", "wasmtime_component_resource_any_to_host",
    "wasmtime_component_resource_any_delete",
    "wasmtime_error_new", "wasmtime_error_message", "wasmtime_error_delete",
    "wasmtime_component_func_call", "wasmtime_engine_increment_epoch",
    "wasmtime_context_set_epoch_deadline",
)


def _load() -> ModuleType | None:
    if os.environ.get("WASMHOST_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _native  # type: ignore[attr-defined]
    except ImportError:
        return None
    entry_points = {name: ctypes.cast(capi.dll[name], ctypes.c_void_p).value for name in _ENTRY_POINTS}
    _native.init(entry_points, _KINDS, Ok, Err, Case, Trap, HostResource)
    return _native


# The loaded extension (initialised), or None: decided once per process.
module: ModuleType | None = _load()
addresses: dict[str, int] = module.addresses() if module is not None else {}


def spec(ty: wc.ValType, resource_id: Callable[[wc.ResourceType], int]) -> tuple[Any, ...]:
    """The C converters' description of ``ty``."""
    code = _SCALAR_CODES.get(type(ty))
    if code is not None:
        return (code,)
    if isinstance(ty, wc.ListType):
        if isinstance(ty.element, wc.U8):
            return (T_BYTES,)
        return (T_LIST, spec(ty.element, resource_id))
    if isinstance(ty, wc.RecordType):
        return (T_RECORD, tuple((name, name.encode(), spec(fty, resource_id)) for name, fty in ty.fields))
    if isinstance(ty, wc.TupleType):
        return (T_TUPLE, tuple(spec(e, resource_id) for e in ty.elements))
    if isinstance(ty, wc.VariantType):
        cases = tuple(
            (name, name.encode(), spec(cty, resource_id) if cty is not None else None) for name, cty in ty.cases
        )
        return (T_VARIANT, cases, _index(cases))
    if isinstance(ty, (wc.EnumType, wc.FlagsType)):
        names = tuple((name, name.encode()) for name in ty.names)
        return (T_ENUM if isinstance(ty, wc.EnumType) else T_FLAGS, names, _index(names))
    if isinstance(ty, wc.OptionType):
        return (T_OPTION, spec(ty.payload, resource_id))
    if isinstance(ty, wc.ResultType):
        return (
            T_RESULT,
            spec(ty.ok, resource_id) if ty.ok is not None else None,
            spec(ty.err, resource_id) if ty.err is not None else None,
        )
    if isinstance(ty, wc.OwnType):
        return (T_OWN, resource_id(ty.ty))
    if isinstance(ty, wc.BorrowType):
        return (T_BORROW, resource_id(ty.ty))
    raise TypeError(f"wasmhost cannot pass values of type {type(ty).__name__}")


def _index(names: tuple[tuple[Any, ...], ...]) -> dict[str, int]:
    return {entry[0]: i for i, entry in enumerate(names)}
