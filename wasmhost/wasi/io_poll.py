"""wasi:io/poll: pollables that really block until ready, and ``poll`` over many."""
from __future__ import annotations

import time
from typing import Callable

from .ctx import WasiCtx
from .interface import HostInterface, HostResource, Trap

poll_interface = HostInterface("wasi:io/poll")


@poll_interface.resource("pollable")
class Pollable(HostResource):
    """Ready when ``check()`` is true or the monotonic ``deadline_ns`` has passed.

    ``check`` must not block (``WasiCtx.block_until`` calls it, while waiting
    with the store's condition held); whatever makes it true must call
    ``WasiCtx.notify`` afterwards (pipes do).
    """

    __slots__ = ("check", "deadline_ns")

    def __init__(self, check: Callable[[], bool] | None = None, deadline_ns: int | None = None) -> None:
        self.check = check
        self.deadline_ns = deadline_ns

    def is_ready(self) -> bool:
        if self.deadline_ns is not None and time.monotonic_ns() >= self.deadline_ns:
            return True
        return self.check is not None and self.check()

    def block(self, ctx: WasiCtx) -> None:
        if self.check is None and self.deadline_ns is None:
            raise Trap("pollable can never become ready")
        ctx.block_until(self.is_ready, self.deadline_ns)


@poll_interface.func("[method]pollable.ready")
def pollable_ready(ctx: WasiCtx, self: Pollable) -> bool:
    with ctx.cond:
        return self.is_ready()


@poll_interface.func("[method]pollable.block")
def pollable_block(ctx: WasiCtx, self: Pollable) -> None:
    self.block(ctx)


@poll_interface.func("poll")
def poll(ctx: WasiCtx, pollables: list[Pollable]) -> list[int]:
    if not pollables:
        raise Trap("poll: the list of pollables is empty")
    deadlines = [p.deadline_ns for p in pollables if p.deadline_ns is not None]
    deadline = min(deadlines) if deadlines else None
    if deadline is None and all(p.check is None for p in pollables):
        raise Trap("poll: none of the pollables can ever become ready")
    ready: list[int] = []

    def any_ready() -> bool:
        ready[:] = [i for i, p in enumerate(pollables) if p.is_ready()]
        return bool(ready)

    while not ctx.block_until(any_ready, deadline):
        continue
    return ready
