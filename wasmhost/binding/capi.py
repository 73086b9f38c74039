"""Raw wasmtime C API entry points with address-typed (``c_void_p``) signatures.

wasmtime-py's own wrappers build Python objects (Managed pointers, FuncType,
Variant, ...) on every call; the binding layer instead works on raw addresses
and bytes, so it declares its own prototypes here. ``dll[name]`` returns a
fresh function object, so these argtypes never change wasmtime-py's own.
"""
from __future__ import annotations

import ctypes
import struct
from typing import Any
from ctypes import c_bool, c_char_p, c_size_t, c_uint32, c_uint64, c_void_p

from wasmtime import _ffi as wasmtime_ffi

dll = wasmtime_ffi.dll

VAL_SIZE = 32          # sizeof(wasmtime_component_val_t)
PAYLOAD = 8            # offset of the union inside a val
RECORD_ENTRY_SIZE = 48  # wasm_name_t name (16) + val (32)
RECORD_ENTRY_VAL = 16
NAME_SIZE = 16          # wasm_name_t / wasm_byte_vec_t: size_t size; char *data


def _kind(name: str) -> int:
    return int(getattr(wasmtime_ffi, f"WASMTIME_COMPONENT_{name}").value)


K_BOOL = _kind("BOOL")
K_S8 = _kind("S8")
K_U8 = _kind("U8")
K_S16 = _kind("S16")
K_U16 = _kind("U16")
K_S32 = _kind("S32")
K_U32 = _kind("U32")
K_S64 = _kind("S64")
K_U64 = _kind("U64")
K_F32 = _kind("F32")
K_F64 = _kind("F64")
K_CHAR = _kind("CHAR")
K_STRING = _kind("STRING")
K_LIST = _kind("LIST")
K_RECORD = _kind("RECORD")
K_TUPLE = _kind("TUPLE")
K_VARIANT = _kind("VARIANT")
K_ENUM = _kind("ENUM")
K_OPTION = _kind("OPTION")
K_RESULT = _kind("RESULT")
K_FLAGS = _kind("FLAGS")
K_RESOURCE = _kind("RESOURCE")


def _proto(name: str, restype: Any, *argtypes: Any) -> Any:
    fn = dll[name]
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


byte_vec_new = _proto("wasm_byte_vec_new", None, c_void_p, c_size_t, c_char_p)
vallist_new_uninit = _proto("wasmtime_component_vallist_new_uninit", None, c_void_p, c_size_t)
valtuple_new_uninit = _proto("wasmtime_component_valtuple_new_uninit", None, c_void_p, c_size_t)
valrecord_new_uninit = _proto("wasmtime_component_valrecord_new_uninit", None, c_void_p, c_size_t)
valflags_new_uninit = _proto("wasmtime_component_valflags_new_uninit", None, c_void_p, c_size_t)
val_new = _proto("wasmtime_component_val_new", c_void_p, c_void_p)
val_delete = _proto("wasmtime_component_val_delete", None, c_void_p)
resource_host_new = _proto("wasmtime_component_resource_host_new", c_void_p, c_bool, c_uint32, c_uint32)
resource_host_rep = _proto("wasmtime_component_resource_host_rep", c_uint32, c_void_p)
resource_host_delete = _proto("wasmtime_component_resource_host_delete", None, c_void_p)
resource_host_to_any = _proto("wasmtime_component_resource_host_to_any", c_void_p, c_void_p, c_void_p, c_void_p)
resource_any_to_host = _proto("wasmtime_component_resource_any_to_host", c_void_p, c_void_p, c_void_p, c_void_p)
resource_any_delete = _proto("wasmtime_component_resource_any_delete", None, c_void_p)
error_new = _proto("wasmtime_error_new", c_void_p, c_char_p)
func_call = _proto("wasmtime_component_func_call", c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p, c_size_t)
linker_instance_add_func = _proto(
    "wasmtime_component_linker_instance_add_func",
    c_void_p, c_void_p, c_char_p, c_size_t, c_void_p, c_void_p, c_void_p,
)
linker_instance_add_resource = _proto(
    "wasmtime_component_linker_instance_add_resource",
    c_void_p, c_void_p, c_char_p, c_size_t, c_void_p, c_void_p, c_void_p, c_void_p,
)

store_epoch_deadline_callback = _proto(
    "wasmtime_store_epoch_deadline_callback", None, c_void_p, c_void_p, c_void_p, c_void_p,
)
# Epoch deadline reached: (context, data, *next_delta, *update_kind) -> error* (non-null traps)
EPOCH_CALLBACK = ctypes.CFUNCTYPE(
    c_size_t, c_void_p, c_void_p, ctypes.POINTER(c_uint64), ctypes.POINTER(ctypes.c_uint8),
)
UPDATE_DEADLINE_CONTINUE = 0

# Host function trampoline: (data, context, func type, args, nargs, results, nresults) -> error*
FUNC_CALLBACK = ctypes.CFUNCTYPE(c_size_t, c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p, c_size_t)
# Resource destructor: (data, context, rep) -> error*
DTOR_CALLBACK = ctypes.CFUNCTYPE(c_size_t, c_void_p, c_void_p, c_uint32)
# Finalizer for the data pointer (required to be a real function by the C API).
FINALIZER = ctypes.CFUNCTYPE(None, c_void_p)


@FINALIZER
def keep_data(_data: int | None) -> None:
    """The data pointers we register are small integers owned by Python objects."""
    return None


# -- memory access ---------------------------------------------------------------
_u8 = ctypes.c_uint8
_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64
string_at = ctypes.string_at
memmove = ctypes.memmove
_pack_ptr = struct.Struct("<Q").pack
_unpack_name = struct.Struct("<QQ").unpack


def read_u64(addr: int) -> int:
    return _u64.from_address(addr).value


def read_u8(addr: int) -> int:
    return _u8.from_address(addr).value


def write_u8(addr: int, value: int) -> None:
    _u8.from_address(addr).value = value


def write_u64(addr: int, value: int) -> None:
    _u64.from_address(addr).value = value


def read_name(addr: int) -> bytes:
    """The bytes of a wasm_name_t / wasm_byte_vec_t at ``addr``."""
    size, data = _unpack_name(string_at(addr, NAME_SIZE))
    return string_at(data, size) if size else b""


def write_name(addr: int, data: bytes) -> None:
    """Allocate (with the C allocator, freed by wasmtime) a byte vec holding ``data``."""
    byte_vec_new(addr, len(data), data)


def error_ptr(message: str) -> int:
    return error_new(message.encode("utf-8", "replace")) or 0
