"""Link Python WASI interfaces into a wasmtime component Linker, converters built once.

``HostLinker.link(component)`` reads the component's imports (any 0.2.x
version), matches each imported interface to a :class:`HostInterface`,
registers every imported resource and function with our own C trampolines,
and returns a ready ``wasmtime.component.Linker``. Each registered function
carries lifters for its parameters and a lowerer for its result, built from
the exact import signature, so a host call costs one dict lookup, the
conversions and the Python call.
"""
from __future__ import annotations

import ctypes
import logging
import traceback
from time import perf_counter_ns
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from wasmtime import Engine, Store
from wasmtime import component as wc

from ..wasi.interface import Err, HostInterface, Trap
from . import capi, native
from .capi import VAL_SIZE, write_u8
from .convert import Converters, Lift, Lower
from .store import StoreBinding

log = logging.getLogger("wasmhost.binding")


class LinkError(Exception):
    """The component needs something wasmhost does not provide."""


@dataclass(slots=True)
class BoundFunc:
    qualified_name: str
    fn: Callable[..., Any]
    lifters: tuple[Lift, ...]
    lower_return: Lower | None
    returns_result: bool


def interface_base(import_name: str) -> tuple[str, str]:
    """``wasi:io/streams@0.2.3`` -> (``wasi:io/streams``, ``0.2.3``)."""
    base, _, version = import_name.partition("@")
    return base, version


class HostLinker:
    """Builds linkers for components and keeps the per-store bindings they use."""

    def __init__(self, engine: Engine, interfaces: Iterable[HostInterface], compiled: bool = True) -> None:
        self.engine = engine
        self.interfaces: dict[str, HostInterface] = {}
        for iface in interfaces:
            if iface.name in self.interfaces:
                raise ValueError(f"interface {iface.name} provided twice")
            self.interfaces[iface.name] = iface
        self.functions: list[BoundFunc] = []
        # Store context address -> binding; written by workers, read by trampolines.
        self.stores: dict[int, StoreBinding] = {}
        # The C trampolines when the extension is built, else ctypes callbacks
        # into _call/_drop. The C ones get a plan tuple (its address) as data.
        self._native = compiled and native.module is not None
        if self._native:
            self._trampoline: Any = native.addresses["host_call"]
            self._dtor: Any = native.addresses["resource_drop"]
        else:
            self._trampoline = capi.FUNC_CALLBACK(self._call)
            self._dtor = capi.DTOR_CALLBACK(self._drop)
        # Plans handed to the C trampolines by address: kept alive here.
        self._plans: list[tuple[Any, ...]] = []
        # Host resource type id -> the WIT name of the resource (defining name).
        self._resource_names: dict[int, str] = {}

    # -- linking ---------------------------------------------------------------------
    def link(self, component: wc.Component) -> wc.Linker:
        imports = component.type.imports(self.engine)
        instances: dict[str, wc.ComponentInstanceType] = {}
        for name, extern in imports.items():
            ty = extern.ty
            if not isinstance(ty, wc.ComponentInstanceType):
                raise LinkError(f"component imports {name!r}, which is not an interface; wasmhost provides only WASI interfaces")
            base, _ = interface_base(name)
            if base not in self.interfaces:
                raise LinkError(f"component imports {name}, which wasmhost does not provide")
            instances[name] = ty

        exports = {name: {n: e.ty for n, e in ty.exports(self.engine).items()} for name, ty in instances.items()}
        # The same resource shows up under several names (`io-error` is wasi:io's
        # `error`, `headers` is `fields`): group by type identity, one host id each.
        groups: list[tuple[wc.ResourceType, int]] = []

        def resource_id(rt: wc.ResourceType) -> int:
            for candidate, type_id in groups:
                if candidate == rt:
                    return type_id
            raise LinkError("a function uses a resource type that no imported interface defines")

        for name, items in exports.items():
            defined = self.interfaces[interface_base(name)[0]].resources
            for item_name, item in items.items():
                if not isinstance(item, wc.ResourceType):
                    continue
                try:
                    type_id = resource_id(item)
                except LinkError:
                    type_id = len(self._resource_names) + 1
                    groups.append((item, type_id))
                    self._resource_names[type_id] = item_name
                if item_name in defined:
                    self._resource_names[type_id] = item_name

        converters = Converters(resource_id)
        linker = wc.Linker(self.engine)
        for name, items in exports.items():
            iface = self.interfaces[interface_base(name)[0]]
            with linker.root() as root, root.add_instance(name) as instance:
                for item_name, item in items.items():
                    if isinstance(item, wc.ResourceType):
                        self._add_resource(instance, item_name, resource_id(item))
                for item_name, item in items.items():
                    if isinstance(item, wc.FuncType):
                        self._add_func(instance, name, item_name, item, iface, converters)
        return linker

    def resource_type_id(self, name: str) -> int:
        """The host type id of a resource by its defining WIT name (after ``link``)."""
        for type_id, rname in self._resource_names.items():
            if rname == name:
                return type_id
        raise LinkError(f"the component does not use resource {name}")

    def _add_resource(self, instance: wc.LinkerInstance, name: str, type_id: int) -> None:
        raw = name.encode()
        resource_type = wc.ResourceType.host(type_id)
        data = type_id
        if self._native:
            data = self._keep((self._drop, type_id))
        error = capi.linker_instance_add_resource(
            instance.ptr(), raw, len(raw), resource_type.ptr(), self._dtor, data, capi.keep_data,
        )
        if error:
            raise LinkError(f"cannot define resource {name}: {capi_error(error)}")

    def _add_func(
        self, instance: wc.LinkerInstance, iface_name: str, func_name: str,
        fty: wc.FuncType, iface: HostInterface, converters: Converters,
    ) -> None:
        fn = iface.functions.get(func_name)
        if fn is None:
            raise LinkError(f"component imports {iface_name}#{func_name}, which wasmhost does not implement")
        result = fty.result
        bound = BoundFunc(
            qualified_name=f"{iface_name}#{func_name}",
            fn=fn,
            lifters=tuple(converters.lift(pty) for _, pty in fty.params),
            lower_return=converters.lower_return(result),
            returns_result=isinstance(result, wc.ResultType),
        )
        self.functions.append(bound)
        index = len(self.functions)  # data pointers must be non-null
        data = index
        if self._native:
            data = self._keep((
                self.stores, fn,
                tuple(native.spec(pty, converters.resource_id) for _, pty in fty.params),
                native.spec(result, converters.resource_id) if result is not None else None,
                bound.returns_result, index, self._call_profiled, self._on_error,
            ))
        raw = func_name.encode()
        error = capi.linker_instance_add_func(instance.ptr(), raw, len(raw), self._trampoline, data, capi.keep_data)
        if error:
            raise LinkError(f"cannot define {iface_name}#{func_name}: {capi_error(error)}")

    def _keep(self, plan: tuple[Any, ...]) -> int:
        """Keep ``plan`` alive for the linker's lifetime; its address is the C callback's data."""
        self._plans.append(plan)
        return id(plan)

    # -- stores ------------------------------------------------------------------------
    def bind_store(self, store: Store, ctx: Any) -> StoreBinding:
        ctx_ptr = ctypes.cast(store._context(), ctypes.c_void_p).value or 0
        binding = StoreBinding(ctx, ctx_ptr)
        self.stores[ctx_ptr] = binding
        return binding

    def unbind_store(self, binding: StoreBinding) -> None:
        self.stores.pop(binding.ctx_ptr, None)
        binding.release_all()

    # -- trampolines (called by wasmtime on the worker thread) ---------------------------
    def _call(self, data: int, ctx_ptr: int, _ty: int, args: int, nargs: int, results: int, nresults: int) -> int:
        bound = self.functions[data - 1]
        try:
            sb = self.stores[ctx_ptr]
            lifters = bound.lifters
            # Unrolled for the common arities: this runs on every host call.
            arity = len(lifters)
            if arity == 1:
                pyargs: Any = (lifters[0](args, sb),)
            elif arity == 2:
                pyargs = (lifters[0](args, sb), lifters[1](args + VAL_SIZE, sb))
            elif arity == 0:
                pyargs = ()
            else:
                pyargs = [lift(args + i * VAL_SIZE, sb) for i, lift in enumerate(lifters)]
            profile = sb.profile
            started = perf_counter_ns() if profile is not None else 0
            try:
                value = bound.fn(sb.ctx, *pyargs)
            except Err as err:
                if not bound.returns_result:
                    raise
                value = err
            finally:
                if profile is not None:
                    profile.host_call(bound.qualified_name, started, perf_counter_ns())
            if bound.lower_return is not None:
                try:
                    bound.lower_return(value, results, sb)
                except BaseException:
                    # Leave wasmtime a value it can drop safely (partially built
                    # nested storage leaks rather than being freed uninitialised).
                    write_u8(results, capi.K_BOOL)
                    raise
            elif value is not None:
                raise TypeError(f"returned {value!r} but the WIT function has no result")
            return 0
        except BaseException as exc:
            return self._on_error(data, ctx_ptr, exc)

    def _call_profiled(self, data: int, ctx_ptr: int, args: int, nargs: int, results: int, nresults: int) -> int:
        """The C trampoline's way into ``_call`` for stores being profiled."""
        return self._call(data, ctx_ptr, 0, args, nargs, results, nresults)

    def _on_error(self, data: int, ctx_ptr: int, exc: BaseException) -> int:
        """A host call failed: a Trap traps the guest, anything else is logged first."""
        bound = self.functions[data - 1]
        if isinstance(exc, Trap):
            sb = self.stores.get(ctx_ptr)
            if sb is not None:
                sb.ctx.last_trap = exc
            return capi.error_ptr(f"{bound.qualified_name}: {exc}")
        log.error(
            "host function %s failed:\n%s", bound.qualified_name,
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
        return capi.error_ptr(f"{bound.qualified_name}: host error: {exc!r}")

    def _drop(self, type_id: int, ctx_ptr: int, rep: int) -> int:
        try:
            sb = self.stores.get(ctx_ptr)
            if sb is None:
                return 0
            obj = sb.table.take(rep)
            obj.on_drop()
            return 0
        except BaseException as exc:
            name = self._resource_names.get(type_id or 0, "?")
            log.error("dropping %s failed:\n%s", name, traceback.format_exc())
            return capi.error_ptr(f"dropping {name}: {exc!r}")


def capi_error(error_ptr: int) -> str:
    from .store import _error_text

    return _error_text(error_ptr)
