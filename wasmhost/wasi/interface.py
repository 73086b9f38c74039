"""How a WASI interface is written in Python, independent of wasmtime.

Each module under ``wasmhost.wasi`` builds one or more :class:`HostInterface`
objects at import time and decorates plain functions into them. The binding
layer (``wasmhost.binding``) reads them at link time, matches them against the
imports of the component being served (any ``@0.2.x`` version) and builds
value converters once per function.

Value mapping between WIT and Python (both directions):

==========================  ==================================================
WIT                         Python
==========================  ==================================================
bool, integers, floats      ``bool``, ``int``, ``float``
char, string                ``str``
list<u8>                    ``bytes`` (moved as one buffer, never per element)
list<T>                     ``list``
tuple<...>                  ``tuple``
record                      ``dict`` keyed by the WIT field names (kebab-case)
option<T>                   ``None`` or the value
result<T, E> (returned)     return the ok value (``None`` for ``_``); ``raise Err(e)``
result<T, E> (elsewhere)    ``Ok(value)`` / ``Err(value)`` instances
variant                     :class:`Case` (a bare ``str`` is accepted for a case
                            without payload when lowering)
enum                        ``str`` (the case name)
flags                       ``frozenset[str]`` (any iterable of names when lowering)
own<R>, borrow<R>           the host object (a :class:`HostResource`)
==========================  ==================================================

A function receives the per-store :class:`~wasmhost.wasi.ctx.WasiCtx` first,
then the WIT parameters in order (for ``[method]`` functions the first WIT
parameter is ``self``). An ``own<R>`` parameter hands the object over to the
host: the guest's handle is gone and ``on_drop`` will not be called for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, TypeVar


class Trap(Exception):
    """Raised by host code to trap the calling guest (misuse, interruption)."""


class Err(Exception):
    """The ``err`` case of a WIT ``result``.

    Raise it from a function whose return type is a ``result`` to return the
    error; construct it (without raising) for a ``result`` nested in a value.
    """

    def __init__(self, value: Any = None) -> None:
        super().__init__(value)
        self.value = value

    def __repr__(self) -> str:
        return f"Err({self.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Err) and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


class Ok(NamedTuple):
    """The ``ok`` case of a WIT ``result`` nested inside another value."""

    value: Any = None


class Case(NamedTuple):
    """A WIT ``variant`` value: the case name and its payload (or ``None``)."""

    tag: str
    payload: Any = None


class HostResource:
    """Base of every Python object that stands behind a WIT resource handle."""

    __slots__ = ("__weakref__",)

    def on_drop(self) -> None:
        """Called when the guest drops its owning handle. Release what it holds here."""
        return None


HostFunc = Callable[..., Any]
F = TypeVar("F", bound=HostFunc)


@dataclass(eq=False)
class HostInterface:
    """A WASI interface (``namespace:package/name``, without version) and its functions.

    ``functions`` maps the WIT export name of each function as it appears in a
    component's import (``now``, ``[constructor]fields``, ``[method]fields.get``,
    ``[static]fields.from-list``) to its Python implementation. ``resources``
    names the resource types this interface defines.
    """

    name: str
    functions: dict[str, HostFunc] = field(default_factory=dict)
    resources: dict[str, type[HostResource]] = field(default_factory=dict)

    def func(self, wit_name: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            if wit_name in self.functions:
                raise ValueError(f"{self.name}: {wit_name} registered twice")
            self.functions[wit_name] = fn
            return fn

        return register

    def resource(self, wit_name: str) -> Callable[[type[HostResource]], type[HostResource]]:
        def register(cls: type[HostResource]) -> type[HostResource]:
            self.resources[wit_name] = cls
            return cls

        return register
