"""The per-store resource table: integer handles (reps) for host objects.

A component instance refers to host resources by the ``rep`` the host chose
when it handed the resource out; this table maps reps back to Python objects.
Reps are reused after release so the table stays compact over millions of
requests on one reused instance.
"""
from __future__ import annotations

from .interface import HostResource, Trap


class ResourceTable:
    __slots__ = ("_objects", "_free", "_next")

    def __init__(self) -> None:
        self._objects: dict[int, HostResource] = {}
        self._free: list[int] = []
        self._next = 1

    def __len__(self) -> int:
        return len(self._objects)

    def insert(self, obj: HostResource) -> int:
        rep = self._free.pop() if self._free else self._next
        if rep == self._next:
            self._next += 1
        self._objects[rep] = obj
        return rep

    def get(self, rep: int) -> HostResource:
        try:
            return self._objects[rep]
        except KeyError:
            raise Trap(f"unknown resource handle {rep}") from None

    def take(self, rep: int) -> HostResource:
        """Remove and return the object: ownership moves to the host."""
        try:
            obj = self._objects.pop(rep)
        except KeyError:
            raise Trap(f"unknown resource handle {rep}") from None
        self._free.append(rep)
        return obj

    def drain(self) -> list[HostResource]:
        """Remove everything (store teardown) and return what was held."""
        objects = list(self._objects.values())
        self._objects.clear()
        self._free.clear()
        self._next = 1
        return objects
