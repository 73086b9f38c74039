"""Per-store binding state: the WASI context, the resource table, staging buffers."""
from __future__ import annotations

import ctypes
import logging
from typing import Any, Callable

from ..wasi.ctx import WasiCtx
from ..wasi.interface import HostResource, Trap
from ..wasi.table import ResourceTable
from . import capi
from .capi import PAYLOAD, VAL_SIZE, read_u64, write_u8

log = logging.getLogger("wasmhost.binding")

_unpack_list = capi.struct.Struct("<QQ").unpack


class StoreBinding:
    """Everything the host-call trampolines need for one wasmtime Store."""

    __slots__ = (
        "ctx", "ctx_ptr", "table", "profile", "_out_ptr", "_out_ref", "_lift_stage", "_lower_stage",
        "_boxes", "_box_depth",
    )

    def __init__(self, ctx: WasiCtx, ctx_ptr: int) -> None:
        self.ctx = ctx
        self.ctx_ptr = ctx_ptr
        self.table = ResourceTable()
        # A ProfileRecorder when --profile guest is on: host calls are timed.
        self.profile: Any = None
        self._out_ptr = ctypes.c_void_p()
        self._out_ref = ctypes.byref(self._out_ptr)  # reused: byref() allocates
        # Reused staging buffers (ctypes arrays: one addressof, no per-call
        # array types); the lowering one has the u8 kind tag preset every 32 bytes.
        self._lift_stage = ctypes.create_string_buffer(0)
        self._lower_stage = ctypes.create_string_buffer(0)
        # Scratch vals for boxed payloads, one per nesting depth (val_new moves
        # the contents out, so each can be reused at once).
        self._boxes: list[tuple[ctypes.Array[ctypes.c_char], int]] = []
        self._box_depth = 0

    # -- resources -----------------------------------------------------------------
    def any_to_rep(self, any_ptr: int) -> int:
        """Turn a guest-passed resource handle into our rep, releasing the handle."""
        error = capi.resource_any_to_host(self.ctx_ptr, any_ptr, self._out_ref)
        if error:
            raise Trap(_error_text(error))
        host = self._out_ptr.value
        rep = capi.resource_host_rep(host)
        capi.resource_host_delete(host)
        return rep

    def new_own(self, obj: HostResource, type_id: int) -> int:
        """Hand ``obj`` to the guest as a new owned handle; returns the resource_any pointer."""
        if not isinstance(obj, HostResource):
            raise TypeError(f"expected a host resource object, got {obj!r}")
        rep = self.table.insert(obj)
        host = capi.resource_host_new(True, rep, type_id)
        error = capi.resource_host_to_any(self.ctx_ptr, host, self._out_ref)
        capi.resource_host_delete(host)
        if error:
            self.table.take(rep)
            raise Trap(_error_text(error))
        return self._out_ptr.value or 0

    # -- boxes (option/result/variant payloads) -------------------------------------
    def boxed(self, lower: Callable[[Any, int, "StoreBinding"], None], value: Any) -> int:
        """Lower ``value`` into a heap val owned by wasmtime; returns its address."""
        depth = self._box_depth
        boxes = self._boxes
        if depth == len(boxes):
            scratch = ctypes.create_string_buffer(VAL_SIZE)
            boxes.append((scratch, ctypes.addressof(scratch)))
        addr = boxes[depth][1]
        self._box_depth = depth + 1
        try:
            lower(value, addr, self)
        finally:
            self._box_depth = depth
        return capi.val_new(addr) or 0

    # -- bulk bytes -----------------------------------------------------------------
    def lift_bytes(self, addr: int) -> bytes:
        """A guest ``list<u8>`` as bytes: one memmove and a strided slice."""
        size, data = _unpack_list(capi.string_at(addr + PAYLOAD, 16))
        if size == 0:
            return b""
        span = size * VAL_SIZE
        stage = self._lift_stage
        if len(stage) < span:
            stage = self._lift_stage = ctypes.create_string_buffer(_grow(span))
        capi.memmove(stage, data, span)
        return memoryview(stage).cast("B")[PAYLOAD:span:VAL_SIZE].tobytes()

    def lower_bytes(self, value: bytes, addr: int) -> None:
        """Write ``value`` as a ``list<u8>``: one C allocation and one memmove."""
        size = len(value)
        write_u8(addr, capi.K_LIST)
        capi.vallist_new_uninit(addr + PAYLOAD, size)
        if size == 0:
            return
        data = read_u64(addr + PAYLOAD + 8)
        span = size * VAL_SIZE
        stage = self._lower_stage
        if len(stage) < span:
            stage = self._lower_stage = ctypes.create_string_buffer(_grow(span))
            view = memoryview(stage).cast("B")
            view[0::VAL_SIZE] = bytes([capi.K_U8]) * (len(stage) // VAL_SIZE)
        memoryview(stage).cast("B")[PAYLOAD:span:VAL_SIZE] = value
        capi.memmove(data, stage, span)

    # -- teardown -------------------------------------------------------------------
    def release_all(self) -> None:
        """The store is going away: let every object the guest still held clean up."""
        for obj in self.table.drain():
            try:
                obj.on_drop()
            except Exception:  # one bad object must not stop the others' cleanup
                log.exception("error releasing %r", obj)


def _grow(span: int) -> int:
    """Staging sizes grow in powers of two (whole vals) so they are rarely reallocated."""
    size = VAL_SIZE * 64
    while size < span:
        size *= 2
    return size


def _error_text(error_ptr: int) -> str:
    from wasmtime import WasmtimeError, _ffi

    err = WasmtimeError._from_ptr(ctypes.cast(error_ptr, ctypes.POINTER(_ffi.wasmtime_error_t)))
    return str(err)
