"""Value converters built once per WIT type, working on raw C value memory.

A *lifter* reads the ``wasmtime_component_val_t`` at an address and returns
the Python value (see ``wasmhost.wasi.interface`` for the mapping); a
*lowerer* writes a Python value into the val at an address, allocating
nested storage with wasmtime's C allocators (wasmtime frees it). Both receive
the :class:`StoreBinding` of the calling store for resource handles and
staging buffers. The wasmtime-py type objects are only read here, at link
time; no type information is fetched per call.
"""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, Callable

from wasmtime import component as wc

from ..wasi.interface import Case, Err, Ok
from . import capi
from .capi import (
    PAYLOAD, RECORD_ENTRY_SIZE, RECORD_ENTRY_VAL, VAL_SIZE, read_name, read_u64, read_u8,
    write_name, write_u8, write_u64,
)

if TYPE_CHECKING:
    from .store import StoreBinding

Lift = Callable[[int, "StoreBinding"], Any]
Lower = Callable[[Any, int, "StoreBinding"], None]

_SCALARS: dict[type, tuple[int, Any, Callable[[Any], Any], Callable[[Any], Any]]] = {
    wc.Bool: (capi.K_BOOL, ctypes.c_bool, bool, bool),
    wc.S8: (capi.K_S8, ctypes.c_int8, int, int),
    wc.U8: (capi.K_U8, ctypes.c_uint8, int, int),
    wc.S16: (capi.K_S16, ctypes.c_int16, int, int),
    wc.U16: (capi.K_U16, ctypes.c_uint16, int, int),
    wc.S32: (capi.K_S32, ctypes.c_int32, int, int),
    wc.U32: (capi.K_U32, ctypes.c_uint32, int, int),
    wc.S64: (capi.K_S64, ctypes.c_int64, int, int),
    wc.U64: (capi.K_U64, ctypes.c_uint64, int, int),
    wc.F32: (capi.K_F32, ctypes.c_float, float, float),
    wc.F64: (capi.K_F64, ctypes.c_double, float, float),
    wc.Char: (capi.K_CHAR, ctypes.c_uint32, chr, ord),
}

_INT_BOUNDS: dict[type, tuple[int, int, str]] = {
    wc.S8: (-(2**7), 2**7 - 1, "s8"), wc.U8: (0, 2**8 - 1, "u8"),
    wc.S16: (-(2**15), 2**15 - 1, "s16"), wc.U16: (0, 2**16 - 1, "u16"),
    wc.S32: (-(2**31), 2**31 - 1, "s32"), wc.U32: (0, 2**32 - 1, "u32"),
    wc.S64: (-(2**63), 2**63 - 1, "s64"), wc.U64: (0, 2**64 - 1, "u64"),
}


class Converters:
    """Builds lifters/lowerers; ``resource_id`` maps a ResourceType to our host type id."""

    def __init__(self, resource_id: Callable[[wc.ResourceType], int]) -> None:
        self.resource_id = resource_id

    # -- lifting (C -> Python) ---------------------------------------------------
    def lift(self, ty: wc.ValType) -> Lift:
        scalar = _SCALARS.get(type(ty))
        if scalar is not None:
            _, ctype, to_py, _ = scalar
            from_address = ctype.from_address

            def lift_scalar(addr: int, sb: StoreBinding) -> Any:
                return to_py(from_address(addr + PAYLOAD).value)
            return lift_scalar
        if isinstance(ty, wc.String):
            return lambda addr, sb: read_name(addr + PAYLOAD).decode("utf-8")
        if isinstance(ty, wc.ListType):
            element = ty.element
            if isinstance(element, wc.U8):
                return lambda addr, sb: sb.lift_bytes(addr)
            lift_el = self.lift(element)

            def lift_list(addr: int, sb: StoreBinding) -> list[Any]:
                size = read_u64(addr + PAYLOAD)
                data = read_u64(addr + PAYLOAD + 8)
                return [lift_el(data + i * VAL_SIZE, sb) for i in range(size)]
            return lift_list
        if isinstance(ty, wc.RecordType):
            fields = [(name, self.lift(fty)) for name, fty in ty.fields]

            def lift_record(addr: int, sb: StoreBinding) -> dict[str, Any]:
                data = read_u64(addr + PAYLOAD + 8)
                return {
                    name: lift_f(data + i * RECORD_ENTRY_SIZE + RECORD_ENTRY_VAL, sb)
                    for i, (name, lift_f) in enumerate(fields)
                }
            return lift_record
        if isinstance(ty, wc.TupleType):
            elements = [self.lift(e) for e in ty.elements]

            def lift_tuple(addr: int, sb: StoreBinding) -> tuple[Any, ...]:
                data = read_u64(addr + PAYLOAD + 8)
                return tuple(lift_e(data + i * VAL_SIZE, sb) for i, lift_e in enumerate(elements))
            return lift_tuple
        if isinstance(ty, wc.VariantType):
            cases = {name: (self.lift(cty) if cty is not None else None) for name, cty in ty.cases}

            def lift_variant(addr: int, sb: StoreBinding) -> Case:
                tag = read_name(addr + PAYLOAD).decode()
                lift_c = cases[tag]
                payload = read_u64(addr + PAYLOAD + 16)
                return Case(tag, lift_c(payload, sb) if lift_c is not None and payload else None)
            return lift_variant
        if isinstance(ty, wc.EnumType):
            return lambda addr, sb: read_name(addr + PAYLOAD).decode()
        if isinstance(ty, wc.OptionType):
            lift_some = self.lift(ty.payload)

            def lift_option(addr: int, sb: StoreBinding) -> Any:
                payload = read_u64(addr + PAYLOAD)
                return lift_some(payload, sb) if payload else None
            return lift_option
        if isinstance(ty, wc.ResultType):
            lift_ok = self.lift(ty.ok) if ty.ok is not None else None
            lift_err = self.lift(ty.err) if ty.err is not None else None

            def lift_result(addr: int, sb: StoreBinding) -> Any:
                payload = read_u64(addr + PAYLOAD + 8)
                if read_u8(addr + PAYLOAD):
                    return Ok(lift_ok(payload, sb) if lift_ok is not None and payload else None)
                return Err(lift_err(payload, sb) if lift_err is not None and payload else None)
            return lift_result
        if isinstance(ty, wc.FlagsType):
            def lift_flags(addr: int, sb: StoreBinding) -> frozenset[str]:
                size = read_u64(addr + PAYLOAD)
                data = read_u64(addr + PAYLOAD + 8)
                return frozenset(read_name(data + i * capi.NAME_SIZE).decode() for i in range(size))
            return lift_flags
        if isinstance(ty, wc.OwnType):
            return lambda addr, sb: sb.table.take(sb.any_to_rep(read_u64(addr + PAYLOAD)))
        if isinstance(ty, wc.BorrowType):
            return lambda addr, sb: sb.table.get(sb.any_to_rep(read_u64(addr + PAYLOAD)))
        raise TypeError(f"wasmhost cannot pass values of type {type(ty).__name__}")

    # -- lowering (Python -> C) --------------------------------------------------
    def lower(self, ty: wc.ValType) -> Lower:
        scalar = _SCALARS.get(type(ty))
        if scalar is not None:
            kind, ctype, _, from_py = scalar
            from_address = ctype.from_address

            bounds = _INT_BOUNDS.get(type(ty))
            if bounds is not None:
                lo, hi, wit_name = bounds

                def lower_int(value: Any, addr: int, sb: StoreBinding) -> None:
                    number = value.__index__()
                    if not lo <= number <= hi:  # ctypes would silently wrap
                        raise OverflowError(f"{value!r} is out of range for {wit_name}")
                    write_u8(addr, kind)
                    from_address(addr + PAYLOAD).value = number
                return lower_int

            def lower_scalar(value: Any, addr: int, sb: StoreBinding) -> None:
                write_u8(addr, kind)
                from_address(addr + PAYLOAD).value = from_py(value)
            return lower_scalar
        if isinstance(ty, wc.String):
            def lower_string(value: str, addr: int, sb: StoreBinding) -> None:
                write_u8(addr, capi.K_STRING)
                write_name(addr + PAYLOAD, value.encode("utf-8"))
            return lower_string
        if isinstance(ty, wc.ListType):
            element = ty.element
            if isinstance(element, wc.U8):
                return lambda value, addr, sb: sb.lower_bytes(value, addr)
            lower_el = self.lower(element)

            def lower_list(value: Any, addr: int, sb: StoreBinding) -> None:
                items = list(value)
                write_u8(addr, capi.K_LIST)
                capi.vallist_new_uninit(addr + PAYLOAD, len(items))
                data = read_u64(addr + PAYLOAD + 8)
                for i, item in enumerate(items):
                    lower_el(item, data + i * VAL_SIZE, sb)
            return lower_list
        if isinstance(ty, wc.RecordType):
            fields = [(name, name.encode(), self.lower(fty)) for name, fty in ty.fields]

            def lower_record(value: Any, addr: int, sb: StoreBinding) -> None:
                get = value.__getitem__ if isinstance(value, dict) else value.__getattribute__
                write_u8(addr, capi.K_RECORD)
                capi.valrecord_new_uninit(addr + PAYLOAD, len(fields))
                data = read_u64(addr + PAYLOAD + 8)
                for i, (name, raw_name, lower_f) in enumerate(fields):
                    entry = data + i * RECORD_ENTRY_SIZE
                    write_name(entry, raw_name)
                    lower_f(get(name), entry + RECORD_ENTRY_VAL, sb)
            return lower_record
        if isinstance(ty, wc.TupleType):
            elements = [self.lower(e) for e in ty.elements]

            def lower_tuple(value: Any, addr: int, sb: StoreBinding) -> None:
                write_u8(addr, capi.K_TUPLE)
                capi.valtuple_new_uninit(addr + PAYLOAD, len(elements))
                data = read_u64(addr + PAYLOAD + 8)
                for i, (lower_e, item) in enumerate(zip(elements, value, strict=True)):
                    lower_e(item, data + i * VAL_SIZE, sb)
            return lower_tuple
        if isinstance(ty, wc.VariantType):
            cases = {
                name: (name.encode(), self.lower(cty) if cty is not None else None)
                for name, cty in ty.cases
            }

            def lower_variant(value: Any, addr: int, sb: StoreBinding) -> None:
                tag, payload = (value, None) if isinstance(value, str) else value
                try:
                    raw_tag, lower_c = cases[tag]
                except KeyError:
                    raise TypeError(f"variant has no case {tag!r}") from None
                write_u8(addr, capi.K_VARIANT)
                write_name(addr + PAYLOAD, raw_tag)
                write_u64(addr + PAYLOAD + 16, sb.boxed(lower_c, payload) if lower_c is not None else 0)
            return lower_variant
        if isinstance(ty, wc.EnumType):
            names = {name: name.encode() for name in ty.names}

            def lower_enum(value: str, addr: int, sb: StoreBinding) -> None:
                write_u8(addr, capi.K_ENUM)
                write_name(addr + PAYLOAD, names[value])
            return lower_enum
        if isinstance(ty, wc.OptionType):
            lower_some = self.lower(ty.payload)

            def lower_option(value: Any, addr: int, sb: StoreBinding) -> None:
                write_u8(addr, capi.K_OPTION)
                write_u64(addr + PAYLOAD, 0 if value is None else sb.boxed(lower_some, value))
            return lower_option
        if isinstance(ty, wc.ResultType):
            return self._lower_result(ty, nested=True)
        if isinstance(ty, wc.FlagsType):
            known = set(ty.names)

            def lower_flags(value: Any, addr: int, sb: StoreBinding) -> None:
                names = [n for n in value]
                unknown = set(names) - known
                if unknown:
                    raise TypeError(f"unknown flags {sorted(unknown)}")
                write_u8(addr, capi.K_FLAGS)
                capi.valflags_new_uninit(addr + PAYLOAD, len(names))
                data = read_u64(addr + PAYLOAD + 8)
                for i, name in enumerate(names):
                    write_name(data + i * capi.NAME_SIZE, name.encode())
            return lower_flags
        if isinstance(ty, wc.OwnType):
            type_id = self.resource_id(ty.ty)

            def lower_own(value: Any, addr: int, sb: StoreBinding) -> None:
                write_u8(addr, capi.K_RESOURCE)
                write_u64(addr + PAYLOAD, sb.new_own(value, type_id))
            return lower_own
        raise TypeError(f"wasmhost cannot return values of type {type(ty).__name__}")

    def _lower_result(self, ty: wc.ResultType, nested: bool) -> Lower:
        lower_ok = self.lower(ty.ok) if ty.ok is not None else None
        lower_err = self.lower(ty.err) if ty.err is not None else None

        def lower_result(value: Any, addr: int, sb: StoreBinding) -> None:
            if nested:
                if isinstance(value, Err):
                    is_ok, payload = False, value.value
                elif isinstance(value, Ok):
                    is_ok, payload = True, value.value
                else:
                    raise TypeError(f"expected Ok(...) or Err(...) for a nested result, got {value!r}")
            else:
                is_ok, payload = not isinstance(value, Err), (value.value if isinstance(value, Err) else value)
            lower_p = lower_ok if is_ok else lower_err
            write_u8(addr, capi.K_RESULT)
            write_u8(addr + PAYLOAD, 1 if is_ok else 0)
            write_u64(addr + PAYLOAD + 8, sb.boxed(lower_p, payload) if lower_p is not None else 0)
        return lower_result

    def lower_return(self, ty: wc.ValType | None) -> Lower | None:
        """The lowerer for a function's return value (top-level results take raw/Err values)."""
        if ty is None:
            return None
        if isinstance(ty, wc.ResultType):
            return self._lower_result(ty, nested=False)
        return self.lower(ty)

